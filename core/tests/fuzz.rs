//! Fuzz target of the graph JSON decoder and the graph checks behind it
//! (`daskrs submit`'s files, which the scheduler checks again): no input
//! may panic. `cargo test` runs a bounded number of inputs (see
//! `daskrs_core::fuzz`), bent from the examples in `tests/fuzz/graph_json`;
//! `cargo bolero test graph_json -p daskrs-core` runs it for as long as
//! asked, guided by coverage.

use daskrs_core::{fuzz, json, kinds, validate};

const EXAMPLES: [&[u8]; 3] = [
    include_bytes!("fuzz/graph_json/tree.json"),
    include_bytes!("fuzz/graph_json/kinds.json"),
    include_bytes!("fuzz/graph_json/cycle.json"),
];

#[test]
fn graph_json() {
    bolero::check!()
        .with_type::<fuzz::Input>()
        .with_iterations(fuzz::inputs(20_000))
        .for_each(|input| {
            let text = fuzz::bytes(&EXAMPLES, input);
            if let Ok(doc) = json::parse_graph(&text) {
                let known = |k: &str| kinds::is_builtin(k) || kinds::OPTIONAL.contains(&k);
                if let Ok(g) = validate(doc.tasks, &doc.outputs, known, kinds::builtin_names) {
                    // A graph that passes names only tasks it has.
                    let n = g.tasks.len() as u32;
                    assert!(
                        g.outputs
                            .iter()
                            .chain(g.inputs.iter().flatten())
                            .all(|&i| i < n)
                    );
                    for o in &doc.outputs {
                        assert!(g.tasks.iter().any(|t| &t.key == o), "output {o}");
                    }
                }
            }
        });
}
