;; loop.wat - a WASI command whose _start never returns (for time limits).
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $forever
      (br $forever))))
