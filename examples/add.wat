;; add.wat - a core module (no _start). Propeller calls the export named by the
;; task name with the task's inputs, e.g. name "add", inputs [2, 3] -> 5.
(module
  (func (export "add") (param $a i32) (param $b i32) (result i32)
    (i32.add (local.get $a) (local.get $b)))

  ;; iterative Fibonacci on i64: fib(0)=0, fib(1)=1, fib(90)=2880067194370816120
  (func (export "fib") (param $n i64) (result i64)
    (local $a i64) (local $b i64) (local $t i64)
    (local.set $b (i64.const 1))
    (block $done
      (loop $next
        (br_if $done (i64.le_s (local.get $n) (i64.const 0)))
        (local.set $t (i64.add (local.get $a) (local.get $b)))
        (local.set $a (local.get $b))
        (local.set $b (local.get $t))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br $next)))
    (local.get $a))

  (func (export "mul") (param $a f64) (param $b f64) (result f64)
    (f64.mul (local.get $a) (local.get $b))))
