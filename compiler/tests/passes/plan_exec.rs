//! The arena executor: a valid plan computes the reference's values; a
//! plan that puts two live tensors on the same bytes must fail — both the
//! static check and, independently, execution.

use crate::common::*;
use compiler::builder::ConfigOverrides;
use compiler::memory;
use compiler::plan_exec::{run_planned, ExecError};
use ir::reference::{self, Tensor};
use ir::Graph;

fn small() -> (Graph, Graph) {
    let cfg = config(
        "densenet-bc-100",
        ConfigOverrides {
            block_config: Some(vec![3, 3, 3]),
            image_size: Some(12),
            ..Default::default()
        },
    );
    let g = random_graph(&cfg, 2, 21);
    let (o, _) = optimized(&g);
    (g, o)
}

fn error_of(g: &Graph, o: &Graph) -> f64 {
    let x = inputs(g, 5);
    let want = reference::run(g, &x).expect("reference");
    let got = run_planned(o, &x).expect("runs");
    got[0].rel_error(&want[0]).expect("same shape")
}

#[test]
fn a_valid_plan_computes_the_reference_values() {
    let (g, o) = small();
    assert!(error_of(&g, &o) <= TOL);
}

#[test]
fn two_live_buffers_on_the_same_bytes_fail() {
    let (g, mut o) = small();
    // A bottleneck output written while its block buffer is live.
    let block = "features.denseblock2.cat";
    let layer = "features.denseblock2.denselayer2.conv1";
    let at = o.buffers[block].offset;
    o.buffers.get_mut(layer).expect("layer buffer").offset = at;
    ir::verify::verify(&o).expect("structurally still fine");
    assert!(matches!(
        memory::check(&o),
        Err(memory::PlanError::Overlap { .. })
    ));
    let e = error_of(&g, &o);
    assert!(
        e.is_nan() || e > 1e-2,
        "a corrupt plan ran fine (error {e})"
    );
}

#[test]
fn a_buffer_shifted_into_its_neighbour_fails() {
    let (g, mut o) = small();
    // Slide the largest buffer up by one cache line: it now overlaps
    // whatever lives right above it while both are live.
    let name = o
        .buffers
        .iter()
        .max_by_key(|(_, b)| b.size_bytes().unwrap_or(0))
        .map(|(n, _)| n.clone())
        .expect("buffers");
    let b = o.buffers.get_mut(&name).expect("buffer");
    b.offset = b.offset.map(|x| x + 64);
    o.arena_bytes = o.arena_bytes.map(|a| a + 64);
    assert!(
        memory::check(&o).is_err(),
        "{name} now overlaps a live buffer"
    );
    let e = error_of(&g, &o);
    assert!(
        e.is_nan() || e > 1e-2,
        "a corrupt plan ran fine (error {e})"
    );
}

#[test]
fn sharing_bytes_across_disjoint_lifetimes_is_fine() {
    // Block 1's buffer is dead before block 2's is first written (the
    // transition's pool output lies between): they may share bytes.
    let (g, mut o) = small();
    let b1 = o.buffers["features.denseblock1.cat"].clone();
    let b2 = o.buffers["features.denseblock2.cat"].clone();
    let need = b1
        .size_bytes()
        .expect("size")
        .max(b2.size_bytes().expect("size"));
    // Move both to a fresh region at the top of the arena.
    let top = o.arena_bytes.expect("planned");
    for n in ["features.denseblock1.cat", "features.denseblock2.cat"] {
        o.buffers.get_mut(n).expect("buffer").offset = Some(top);
    }
    o.arena_bytes = Some(top + need);
    memory::check(&o).expect("still a valid plan");
    assert!(error_of(&g, &o) <= TOL);
}

#[test]
fn bad_inputs_and_unplanned_graphs_are_errors() {
    let (g, o) = small();
    assert!(matches!(
        run_planned(&g, &inputs(&g, 1)),
        Err(ExecError::NotPlanned)
    ));
    assert!(matches!(
        run_planned(&o, &[]),
        Err(ExecError::InputCount {
            expected: 1,
            found: 0
        })
    ));
    let wrong = Tensor::zeros([1, 3, 12, 12]);
    assert!(matches!(
        run_planned(&o, &[wrong]),
        Err(ExecError::InputShape { .. })
    ));
}
