//! Node names: the graph's name index (lookups, fresh names, renames, removals) and the
//! verifier's check that no node was renamed behind it.

use ir::ops::Op;
use ir::verify::verify;
use ir::{Graph, IrError, TensorType};

fn chain() -> Result<Graph, IrError> {
    let mut g = Graph::new("names");
    let x = g.add_input("x", TensorType::f32([1, 2, 4, 4]))?;
    let a = g.add_node("a", Op::Relu, &[x])?;
    let b = g.add_node("b", Op::Relu, &[a])?;
    let dead = g.add_node("dead", Op::Relu, &[a])?;
    let _ = dead;
    g.set_outputs(vec![b]);
    Ok(g)
}

#[test]
fn lookups_fresh_names_and_renames_follow_the_index() -> Result<(), IrError> {
    let mut g = chain()?;
    let a = g.node_by_name("a").expect("a");
    assert_eq!(g.node(a).name, "a");
    assert!(g.node_by_name("nothing").is_none());
    assert!(g.add_node("a", Op::Relu, &[a]).is_err(), "a taken name");
    assert_eq!(g.fresh_node_name("a"), "a.1");
    assert_eq!(g.fresh_node_name("c"), "c");

    g.rename_node(a, "a2")?;
    assert!(g.node_by_name("a").is_none());
    assert_eq!(g.node_by_name("a2"), Some(a));
    assert_eq!(g.fresh_node_name("a"), "a", "the old name is free again");
    assert!(g.rename_node(a, "b").is_err(), "renaming onto a taken name");
    g.rename_node(a, "a2")?; // its own name
    verify(&g)?;

    assert!(g.remove_dead(), "`dead` reaches no output");
    assert!(g.node_by_name("dead").is_none());
    let b = g.node_by_name("b").expect("b");
    g.remove_node(b);
    assert!(g.node_by_name("b").is_none());
    assert!(g.names_indexed());
    Ok(())
}

#[test]
fn a_rename_behind_the_index_fails_verification() -> Result<(), IrError> {
    let mut g = chain()?;
    let a = g.node_by_name("a").expect("a");
    g.node_mut(a).name = "b".into();
    let e = verify(&g).expect_err("two nodes named b").to_string();
    assert!(
        e.contains("duplicate node name") || e.contains("rename_node"),
        "{e}"
    );

    let mut g = chain()?;
    let a = g.node_by_name("a").expect("a");
    g.node_mut(a).name = "z".into();
    assert!(!g.names_indexed());
    let e = verify(&g).expect_err("renamed outside the index");
    assert!(e.to_string().contains("rename_node"), "{e}");
    Ok(())
}

#[test]
fn the_schedule_follows_every_change() -> Result<(), IrError> {
    let mut g = chain()?;
    let before = g.schedule()?;
    assert_eq!(before.len(), 4);
    let x = g.inputs()[0];
    let b = g.node_by_name("b").expect("b");
    let c = g.add_node("c", Op::Relu, &[x])?;
    assert_eq!(g.schedule()?.len(), 5, "a new node is scheduled");
    // b now reads c, so c comes before b although b has the lower index.
    g.set_operands(b, &[c]);
    let order = g.schedule()?;
    let pos = |id| order.iter().position(|&n| n == id).expect("scheduled");
    assert!(pos(c) < pos(b));
    g.remove_dead();
    assert_eq!(g.schedule()?.len(), 3, "x, c, b");
    Ok(())
}
