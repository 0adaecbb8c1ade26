//! Storage in the IR: placements in buffers, zero borders, arena offsets —
//! what the verifier accepts and rejects, and the text form round trip.

use ir::ops::{Conv2d, Op};
use ir::text::{parse, print};
use ir::verify::verify;
use ir::{Buffer, Constant, Graph, IrError, NodeId, Placement, TensorType};

type R<T> = Result<T, IrError>;

fn conv(g: &mut Graph, name: &str, x: NodeId, cin: usize, out: usize, k: usize) -> R<NodeId> {
    let w = format!("{name}.weight");
    g.add_constant(&w, Constant::unbound([out, cin, k, k]))?;
    let op = Op::Conv2d(Conv2d {
        weight: w,
        bias: None,
        out_channels: out,
        kernel: [k, k],
        stride: [1, 1],
        padding: [k / 2, k / 2],
        prologue: None,
        relu: true,
    });
    g.add_node(name, op, &[x])
}

fn set_offset(g: &mut Graph, buffer: &str, offset: Option<usize>) {
    if let Some(b) = g.buffers.get_mut(buffer) {
        b.offset = offset;
    }
}

fn place(g: &mut Graph, id: NodeId, buffer: &str, channel_offset: usize) {
    g.node_mut(id).placement = Some(Placement {
        buffer: buffer.into(),
        channel_offset,
    });
}

/// x → a (4 ch), b (2 ch) → cat(a, b) → c; `a`, `b` and the concat in
/// buffer `blk`, `c` in a bordered buffer.
fn block() -> R<(Graph, [NodeId; 4])> {
    let mut g = Graph::new("block");
    let x = g.add_input("x", TensorType::f32([2, 3, 5, 5]))?;
    let a = conv(&mut g, "a", x, 3, 4, 1)?;
    let b = conv(&mut g, "b", a, 4, 2, 1)?;
    let cat = g.add_node("cat", Op::Concat, &[a, b])?;
    let c = conv(&mut g, "c", cat, 6, 3, 1)?;
    let d = conv(&mut g, "d", c, 3, 3, 3)?;
    g.set_outputs(vec![d]);
    g.buffers
        .insert("blk".into(), Buffer::new(TensorType::f32([2, 6, 5, 5])));
    let mut bordered = Buffer::new(TensorType::f32([2, 3, 5, 5]));
    bordered.border = [1, 1];
    g.buffers.insert("c".into(), bordered);
    place(&mut g, a, "blk", 0);
    place(&mut g, b, "blk", 4);
    place(&mut g, cat, "blk", 0);
    place(&mut g, c, "c", 0);
    Ok((g, [a, b, cat, c]))
}

#[test]
fn a_block_buffer_with_a_view_verifies() -> R<()> {
    let (g, [_, _, cat, _]) = block()?;
    verify(&g)?;
    assert!(g.is_view(cat));
    assert_eq!(g.buffers["c"].size_bytes(), Some(2 * 3 * 7 * 7 * 4));
    Ok(())
}

#[test]
fn overlapping_writers_are_rejected_naming_the_node() -> R<()> {
    let (mut g, [_, b, cat, _]) = block()?;
    place(&mut g, b, "blk", 3);
    // `b` overlaps `a`; the concat is no longer a view, so it writes the
    // whole buffer too and overlaps both.
    assert!(!g.is_view(cat));
    let e = verify(&g).expect_err("overlap");
    assert!(matches!(&e, IrError::Node { .. }), "{e}");
    assert!(e.to_string().contains("overlapping"), "{e}");
    Ok(())
}

#[test]
fn bad_placements_are_rejected() -> R<()> {
    let (mut g, [a, ..]) = block()?;
    place(&mut g, a, "nowhere", 0);
    assert!(verify(&g)
        .expect_err("undeclared")
        .to_string()
        .contains("undeclared buffer"));

    let (mut g, [_, b, ..]) = block()?;
    place(&mut g, b, "blk", 5);
    assert!(verify(&g)
        .expect_err("past the end")
        .to_string()
        .contains("does not fit"));

    let (mut g, _) = block()?;
    let x = g.inputs()[0];
    place(&mut g, x, "blk", 0);
    assert!(verify(&g)
        .expect_err("input")
        .to_string()
        .contains("caller-owned"));
    Ok(())
}

#[test]
fn a_planned_graph_needs_every_value_placed_and_inside_the_arena() -> R<()> {
    let (mut g, _) = block()?;
    g.arena_bytes = Some(10_000);
    let e = verify(&g).expect_err("d unplaced");
    assert!(e.to_string().contains("no placement"), "{e}");

    let (mut g, _) = block()?;
    let d = g.outputs()[0];
    g.buffers
        .insert("d".into(), Buffer::new(TensorType::f32([2, 3, 5, 5])));
    place(&mut g, d, "d", 0);
    set_offset(&mut g, "blk", Some(0));
    set_offset(&mut g, "c", Some(1200));
    set_offset(&mut g, "d", Some(1200 + 1176));
    g.arena_bytes = Some(1200 + 1176 + 600);
    verify(&g)?;
    g.arena_bytes = Some(1200 + 1176 + 599);
    let e = verify(&g).expect_err("too small");
    assert!(e.to_string().contains("do not fit"), "{e}");
    Ok(())
}

#[test]
fn remove_dead_drops_unused_buffers() -> R<()> {
    let (mut g, _) = block()?;
    g.buffers
        .insert("unused".into(), Buffer::new(TensorType::f32([1])));
    assert!(g.remove_dead());
    assert!(!g.buffers.contains_key("unused"));
    assert!(g.buffers.contains_key("blk"));
    Ok(())
}

#[test]
fn storage_prints_and_round_trips() -> R<()> {
    let (mut g, _) = block()?;
    set_offset(&mut g, "blk", Some(64));
    g.arena_bytes = None;
    let text = print(&g);
    assert!(
        text.contains("  buffer blk: f32[2, 6, 5, 5] {offset=64}\n"),
        "{text}"
    );
    assert!(
        text.contains("  buffer c: f32[2, 3, 5, 5] {border=[1, 1]}\n"),
        "{text}"
    );
    assert!(text.contains(": f32[2, 2, 5, 5] in blk[4]\n"), "{text}");
    let back = parse(&text)?;
    assert_eq!(print(&back), text);
    assert_eq!(back.buffers, g.buffers);
    let placements = |g: &Graph| -> Vec<_> {
        g.node_ids()
            .into_iter()
            .map(|id| (g.node(id).name.clone(), g.node(id).placement.clone()))
            .collect()
    };
    assert_eq!(placements(&back), placements(&g));

    g.arena_bytes = Some(usize::MAX);
    let back = parse(&print(&g))?;
    assert_eq!(back.arena_bytes, Some(usize::MAX));
    Ok(())
}

#[test]
fn storage_parse_errors() {
    let graph =
        |body: &str| format!("graph g {{\n{body}\n  %x = input : f32[1]\n  return %x\n}}\n");
    for (body, needle) in [
        ("  buffer b: f32[1] {border=[1]}", "[rows, cols]"),
        ("  buffer b: f32[1] {colour=1}", "unknown or repeated"),
        (
            "  buffer b: f32[1] {offset=1, offset=2}",
            "unknown or repeated",
        ),
        ("  buffer b: f32[1]\n  buffer b: f32[1]", "declared twice"),
        ("  arena 1\n  arena 2", "given twice"),
        ("  arena -1", "byte count"),
        ("  arena 99999999999999999999999", "out of range"),
    ] {
        let e = parse(&graph(body)).expect_err(body);
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
    let e =
        parse("graph g {\n  %x = input : f32[1] in b[1, 2]\n  return %x\n}\n").expect_err("list");
    assert!(e.to_string().contains("channel offset"), "{e}");
}
