;; cat.wat - a WASI command that copies stdin to stdout, or, given arguments,
;; each named file of the first preopened directory (fd 3; /data in the runner)
;; to stdout. A file that cannot be opened is reported on stderr and the exit
;; code becomes 1.
(module
  (import "wasi_snapshot_preview1" "fd_read"
    (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close"
    (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get"
    (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit"
    (func $proc_exit (param i32)))

  (memory (export "memory") 1)

  ;; Layout:
  ;;   0..8          iovec {ptr, len}
  ;;   8             nread / nwritten
  ;;   16, 20        argc, argv buffer size
  ;;   24            fd from path_open
  ;;   64..          messages
  ;;   1024..2048    argv pointers (at most 256 arguments)
  ;;   2048..32768   argv strings
  ;;   32768..49152  copy buffer
  (data (i32.const 64) "cat: cannot open ")  ;; 17 bytes
  (data (i32.const 96) "\n")

  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func $strlen (param $ptr i32) (result i32)
    (local $p i32)
    (local.set $p (local.get $ptr))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (i32.load8_u (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (i32.sub (local.get $p) (local.get $ptr)))

  ;; copies fd to stdout until end of file; returns the WASI errno of a failed read
  (func $copy (param $fd i32) (result i32)
    (local $err i32) (local $n i32)
    (loop $more
      (i32.store (i32.const 0) (i32.const 32768))
      (i32.store (i32.const 4) (i32.const 16384))
      (local.set $err (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (local.get $err) (then (return (local.get $err))))
      (local.set $n (i32.load (i32.const 8)))
      (if (i32.eqz (local.get $n)) (then (return (i32.const 0))))
      (call $write (i32.const 1) (i32.const 32768) (local.get $n))
      (br $more))
    (i32.const 0))

  (func (export "_start")
    (local $argc i32) (local $i i32) (local $name i32) (local $len i32) (local $status i32)
    (if (call $args_sizes_get (i32.const 16) (i32.const 20))
      (then (call $proc_exit (i32.const 2))))
    (local.set $argc (i32.load (i32.const 16)))
    (if (i32.or
          (i32.gt_u (local.get $argc) (i32.const 256))
          (i32.gt_u (i32.load (i32.const 20)) (i32.const 30720)))
      (then (call $proc_exit (i32.const 2))))
    (if (call $args_get (i32.const 1024) (i32.const 2048))
      (then (call $proc_exit (i32.const 2))))

    (if (i32.le_u (local.get $argc) (i32.const 1))
      (then
        (if (call $copy (i32.const 0)) (then (call $proc_exit (i32.const 1))))
        (return)))

    (local.set $i (i32.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $argc)))
        (local.set $name (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $len (call $strlen (local.get $name)))
        ;; path_open(dirfd 3, follow symlinks, path, oflags 0, rights fd_read|fd_seek, inheriting 0, fdflags 0, &fd)
        (if (call $path_open (i32.const 3) (i32.const 1) (local.get $name) (local.get $len)
              (i32.const 0) (i64.const 6) (i64.const 0) (i32.const 0) (i32.const 24))
          (then
            (call $write (i32.const 2) (i32.const 64) (i32.const 17))
            (call $write (i32.const 2) (local.get $name) (local.get $len))
            (call $write (i32.const 2) (i32.const 96) (i32.const 1))
            (local.set $status (i32.const 1)))
          (else
            (if (call $copy (i32.load (i32.const 24))) (then (local.set $status (i32.const 1))))
            (drop (call $fd_close (i32.load (i32.const 24))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (if (local.get $status) (then (call $proc_exit (local.get $status))))))
