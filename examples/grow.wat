;; grow.wat - a WASI command that grows its memory one page (64 KiB) at a time
;; until memory.grow fails, then traps. The memory has no declared maximum, so
;; only the runner's memory limit stops it.
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $more
      (br_if $more (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))
