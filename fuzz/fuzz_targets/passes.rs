//! The fuzzer's bytes choose a small graph (shapes, weight paths, NaN/Inf/zero/huge
//! weights), a pass of the registry and its configuration; the pass must end in a
//! model that serializes or in a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/fuzzgen/mod.rs"]
mod fuzzgen;

use fuzzgen::{random_config, random_model, Bytes, Draw};
use onnxq::pass::{registry, run_pipeline, PassCx};

fuzz_target!(|data: &[u8]| {
    let mut draw = Bytes(data);
    let (name, _, _) = *draw.pick(registry::PASSES);
    let mut model = random_model(&mut draw);
    let config = random_config(&mut draw, name);
    let Ok(pass) = registry::build(name, config) else {
        return;
    };
    let mut cx = PassCx {
        progress: false,
        seed: 0,
    };
    if run_pipeline(&mut model, &[pass], &mut cx).is_ok() {
        let _ = onnxq::io::to_bytes(&model);
    }
});
