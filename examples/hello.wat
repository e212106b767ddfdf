;; hello.wat - a WASI command (preview1).
;; Prints a greeting, then each argument after argv[0] on its own line,
;; then the value of the environment variable GREETING if it is set.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get"
    (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get"
    (func $environ_get (param i32 i32) (result i32)))

  (memory (export "memory") 1)

  ;; Layout of the first page:
  ;;   0..8    iovec {ptr, len}
  ;;   8       nwritten
  ;;   16, 20  count and buffer size from *_sizes_get
  ;;   32..    constant strings
  ;;   1024..  heap (pointer arrays + string buffers), grown on demand
  (data (i32.const 32) "Hello from WebAssembly!\n")   ;; 24 bytes
  (data (i32.const 64) "GREETING=")                   ;; 9 bytes
  (data (i32.const 80) "\n")

  (global $heap (mut i32) (i32.const 1024))

  ;; Bump allocator that grows memory when needed. Returns 0 when out of memory.
  (func $alloc (param $size i32) (result i32)
    (local $ptr i32) (local $end i32) (local $have i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.lt_s
              (memory.grow
                (i32.shr_u
                  (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                  (i32.const 16)))
              (i32.const 0))
          (then (return (i32.const 0))))))
    ;; keep 4-byte alignment
    (global.set $heap (i32.and (i32.add (local.get $end) (i32.const 3)) (i32.const -4)))
    (local.get $ptr))

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $strlen (param $ptr i32) (result i32)
    (local $p i32)
    (local.set $p (local.get $ptr))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (i32.sub (local.get $p) (local.get $ptr)))

  (func $println (param $ptr i32) (param $len i32)
    (call $write (local.get $ptr) (local.get $len))
    (call $write (i32.const 80) (i32.const 1)))

  ;; 1 if the NUL-terminated string at $s starts with $len bytes at $prefix
  (func $starts_with (param $s i32) (param $prefix i32) (param $len i32) (result i32)
    (local $i i32)
    (block $no
      (loop $next
        (if (i32.ge_u (local.get $i) (local.get $len)) (then (return (i32.const 1))))
        (br_if $no (i32.ne
          (i32.load8_u (i32.add (local.get $s) (local.get $i)))
          (i32.load8_u (i32.add (local.get $prefix) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func $main (export "_start")
    (local $count i32) (local $size i32) (local $ptrs i32) (local $buf i32)
    (local $i i32) (local $s i32)

    (call $write (i32.const 32) (i32.const 24))

    ;; arguments after argv[0]
    (if (i32.eqz (call $args_sizes_get (i32.const 16) (i32.const 20)))
      (then
        (local.set $count (i32.load (i32.const 16)))
        (local.set $size (i32.load (i32.const 20)))
        (if (i32.gt_u (local.get $count) (i32.const 1))
          (then
            (local.set $ptrs (call $alloc (i32.mul (local.get $count) (i32.const 4))))
            (local.set $buf (call $alloc (local.get $size)))
            (if (i32.and
                  (i32.ne (local.get $ptrs) (i32.const 0))
                  (i32.ne (local.get $buf) (i32.const 0)))
              (then
                (if (i32.eqz (call $args_get (local.get $ptrs) (local.get $buf)))
                  (then
                    (local.set $i (i32.const 1))
                    (block $done
                      (loop $next
                        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
                        (local.set $s (i32.load
                          (i32.add (local.get $ptrs) (i32.shl (local.get $i) (i32.const 2)))))
                        (call $println (local.get $s) (call $strlen (local.get $s)))
                        (local.set $i (i32.add (local.get $i) (i32.const 1)))
                        (br $next)))))))))))

    ;; GREETING from the environment
    (if (i32.eqz (call $environ_sizes_get (i32.const 16) (i32.const 20)))
      (then
        (local.set $count (i32.load (i32.const 16)))
        (local.set $size (i32.load (i32.const 20)))
        (if (i32.gt_u (local.get $count) (i32.const 0))
          (then
            (local.set $ptrs (call $alloc (i32.mul (local.get $count) (i32.const 4))))
            (local.set $buf (call $alloc (local.get $size)))
            (if (i32.and
                  (i32.ne (local.get $ptrs) (i32.const 0))
                  (i32.ne (local.get $buf) (i32.const 0)))
              (then
                (if (i32.eqz (call $environ_get (local.get $ptrs) (local.get $buf)))
                  (then
                    (local.set $i (i32.const 0))
                    (block $done
                      (loop $next
                        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
                        (local.set $s (i32.load
                          (i32.add (local.get $ptrs) (i32.shl (local.get $i) (i32.const 2)))))
                        (if (call $starts_with (local.get $s) (i32.const 64) (i32.const 9))
                          (then
                            (local.set $s (i32.add (local.get $s) (i32.const 9)))
                            (call $println (local.get $s) (call $strlen (local.get $s)))
                            (br $done)))
                        (local.set $i (i32.add (local.get $i) (i32.const 1)))
                        (br $next)))))))))))))
