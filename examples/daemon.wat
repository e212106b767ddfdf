;; daemon.wat - a WASI command that never returns: every ~200 ms it writes
;; "tick N\n" to stdout, sleeping with poll_oneoff on a relative clock subscription.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; Layout:
  ;;   0..8     iovec {ptr, len}
  ;;   8        nwritten / nevents
  ;;   64..112  subscription (48 bytes)
  ;;   128..160 event (32 bytes)
  ;;   256..    line buffer: "tick " then digits then "\n"
  (data (i32.const 256) "tick ")

  (func $sleep_ms (param $ms i64)
    ;; subscription: userdata u64 @0, tag u8 @8 (0 = clock),
    ;; clock id u32 @16 (1 = monotonic), timeout u64 @24 (ns), precision u64 @32, flags u16 @40 (0 = relative)
    (i64.store (i32.const 64) (i64.const 42))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.mul (local.get $ms) (i64.const 1000000)))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 64) (i32.const 128) (i32.const 1) (i32.const 8))))

  ;; writes the decimal digits of $n at $ptr, returns the number of bytes written
  (func $utoa (param $n i32) (param $ptr i32) (result i32)
    (local $len i32) (local $t i32) (local $i i32)
    (local.set $t (local.get $n))
    (loop $count
      (local.set $len (i32.add (local.get $len) (i32.const 1)))
      (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $count (i32.ne (local.get $t) (i32.const 0))))
    (local.set $i (local.get $len))
    (loop $digit
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store8 (i32.add (local.get $ptr) (local.get $i))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digit (i32.ne (local.get $i) (i32.const 0))))
    (local.get $len))

  (func (export "_start")
    (local $n i32) (local $len i32)
    (loop $forever
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (local.set $len (call $utoa (local.get $n) (i32.const 261)))
      (i32.store8 (i32.add (i32.const 261) (local.get $len)) (i32.const 10))
      (i32.store (i32.const 0) (i32.const 256))
      (i32.store (i32.const 4) (i32.add (local.get $len) (i32.const 6)))
      (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (call $sleep_ms (i64.const 200))
      (br $forever))))
