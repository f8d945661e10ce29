;; A minimal proxy-wasm plugin (ABI 0.2.1), written for Rudder's tests: it adds one response
;; header, named and valued by its plugin configuration. Discovery hands the configuration over
;; as JSON, {"header":"NAME","value":"VALUE"} with the keys in that order, so the name is the
;; second quoted string and the value the fourth. A configuration without four strings fails
;; the plugin's configure step.
;;
;; Plugins with the same module share one VM, so each root context (plugin) keeps its own
;; header: roots in a 64-slot table at 64 (id, name, name length, value, value length), and
;; every stream's root in a 4096-slot table at 4096 (id, root), both indexed by id modulo
;; their size. The host's scratch words live at 0 and 4; the heap starts at 40 KiB.
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)

  ;; Memory the host asks for comes from a bump allocator; nothing is freed.
  (global $heap (mut i32) (i32.const 40960))

  (func (export "proxy_abi_version_0_2_1"))

  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local $end i32)
    (local.set $at (global.get $heap))
    (local.set $end
      (i32.add (local.get $at) (i32.and (i32.add (local.get $size) (i32.const 15)) (i32.const -16))))
    (block $fits
      (loop $grow
        (br_if $fits (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
          (then (return (i32.const 0))))
        (br $grow)))
    (global.set $heap (local.get $end))
    (local.get $at))

  (func $root_slot (param $root i32) (result i32)
    (i32.add (i32.const 64) (i32.shl (i32.and (local.get $root) (i32.const 63)) (i32.const 5))))

  (func $stream_slot (param $context i32) (result i32)
    (i32.add (i32.const 4096) (i32.shl (i32.and (local.get $context) (i32.const 4095)) (i32.const 3))))

  ;; Remembers which root (plugin) a stream belongs to; roots have parent 0.
  (func (export "proxy_on_context_create") (param $context i32) (param $parent i32)
    (local $slot i32)
    (local.set $slot (call $stream_slot (local.get $context)))
    (i32.store (local.get $slot) (local.get $context))
    (i32.store offset=4 (local.get $slot) (local.get $parent)))

  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (i32.const 1))

  ;; Buffer 7 is the plugin configuration; the host stores its address at 0 and length at 4.
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (local $data i32)
    (local $len i32)
    (local $i i32)
    (local $quotes i32)
    (local $at i32)
    (local $slot i32)
    (if (i32.ne
          (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0) (i32.const 4))
          (i32.const 0))
      (then (return (i32.const 0))))
    (local.set $data (i32.load (i32.const 0)))
    (local.set $len (i32.load (i32.const 4)))
    (local.set $slot (call $root_slot (local.get $root)))
    (i32.store (local.get $slot) (local.get $root))
    (block $done
      (loop $scan
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $at (i32.add (local.get $data) (local.get $i)))
        (if (i32.eq (i32.load8_u (local.get $at)) (i32.const 34))
          (then
            (local.set $quotes (i32.add (local.get $quotes) (i32.const 1)))
            (if (i32.eq (local.get $quotes) (i32.const 3))
              (then (i32.store offset=4 (local.get $slot) (i32.add (local.get $at) (i32.const 1)))))
            (if (i32.eq (local.get $quotes) (i32.const 4))
              (then (i32.store offset=8 (local.get $slot)
                (i32.sub (local.get $at) (i32.load offset=4 (local.get $slot))))))
            (if (i32.eq (local.get $quotes) (i32.const 7))
              (then (i32.store offset=12 (local.get $slot) (i32.add (local.get $at) (i32.const 1)))))
            (if (i32.eq (local.get $quotes) (i32.const 8))
              (then (i32.store offset=16 (local.get $slot)
                (i32.sub (local.get $at) (i32.load offset=12 (local.get $slot))))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.ge_u (local.get $quotes) (i32.const 8)))

  ;; Map 2 is the response headers; 0 lets the response go on.
  (func (export "proxy_on_response_headers") (param $context i32) (param i32 i32) (result i32)
    (local $stream i32)
    (local $root i32)
    (local $slot i32)
    (local.set $stream (call $stream_slot (local.get $context)))
    (if (i32.ne (i32.load (local.get $stream)) (local.get $context))
      (then (return (i32.const 0))))
    (local.set $root (i32.load offset=4 (local.get $stream)))
    (local.set $slot (call $root_slot (local.get $root)))
    (if (i32.ne (i32.load (local.get $slot)) (local.get $root))
      (then (return (i32.const 0))))
    (drop (call $add_header
      (i32.const 2)
      (i32.load offset=4 (local.get $slot)) (i32.load offset=8 (local.get $slot))
      (i32.load offset=12 (local.get $slot)) (i32.load offset=16 (local.get $slot))))
    (i32.const 0))
)
