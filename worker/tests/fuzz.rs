//! Fuzz target of the worker's reading of results from peers: Arrow IPC
//! streams, whole or in pieces, as inputs of the built-in kinds that
//! compute on them. No input may panic it. `cargo test` runs a bounded
//! number of inputs (see `daskrs_core::fuzz`), bent from the streams
//! below; `cargo bolero test peer_results -p daskrs-worker` runs it for
//! as long as asked, guided by coverage. (The generating kinds' arguments
//! are checked, and fuzzed, with the graph: see daskrs-core.)

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use daskrs_core::{DataFormat, fuzz};
use daskrs_worker::data::Data;
use daskrs_worker::kinds::Registry;

const COMPUTING: [&str; 9] = [
    "add", "sub", "mul", "div", "sum", "min", "max", "count", "noop",
];

fn stream(array: ArrayRef) -> Vec<u8> {
    Data::from_array(array)
        .expect("a valid array")
        .bytes
        .to_vec()
}

#[test]
fn peer_results() {
    let ints = stream(Arc::new(Int64Array::from(vec![1, -2, i64::MAX])));
    let floats = stream(Arc::new(Float64Array::from(vec![
        Some(0.5),
        None,
        Some(f64::NAN),
    ])));
    let strings = stream(Arc::new(StringArray::from(vec!["a", "bc"])));
    let pieces = Data::pieces(&[
        ints.clone().into(),
        bytes::Bytes::new(),
        floats.clone().into(),
    ])
    .bytes
    .to_vec();
    let examples: [&[u8]; 4] = [&ints, &floats, &strings, &pieces];
    // The registry is only read: a panic in one input leaves nothing half done.
    let kinds = std::panic::AssertUnwindSafe(Registry::builtin());
    let good = Data::from_array(Arc::new(Int64Array::from(vec![3, 4, 5]))).expect("valid");
    bolero::check!()
        .with_type::<fuzz::Input>()
        .with_iterations(fuzz::inputs(20_000))
        .for_each(|input| {
            let bytes: bytes::Bytes = fuzz::bytes(&examples, input).into();
            let arrow = Data {
                format: DataFormat::Arrow,
                bytes: bytes.clone(),
            };
            let _ = arrow.batches();
            let in_pieces = Data {
                format: DataFormat::Pieces,
                bytes,
            };
            let mut inputs = vec![arrow.clone(), good.clone()];
            for i in 0..3 {
                if let Ok(piece) = in_pieces.piece(i) {
                    inputs.push(piece);
                }
            }
            for name in COMPUTING {
                let kind = kinds.get(name).expect("built in");
                let _ = kind.run(b"", &inputs);
                let _ = kind.run(b"", &inputs[..1]);
            }
        });
}
