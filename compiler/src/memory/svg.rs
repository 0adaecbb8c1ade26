//! Draw a [`MemoryPlan`]: time (schedule steps) across, arena bytes up;
//! each buffer a rectangle over its lifetime and byte range, coloured by
//! kind, with its name and size as a tooltip. A dashed line marks the lower
//! bound, so the gap between packing and bound can be seen.

use super::report::{BufferKind, MemoryPlan};
use std::fmt::Write;

const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 600.0;
const MARGIN: f64 = 60.0;

/// The plan as a standalone SVG document.
pub fn svg(plan: &MemoryPlan) -> String {
    let steps = plan.schedule.len().max(1) as f64;
    let bytes = plan.arena_bytes.max(plan.lower_bound_bytes).max(1) as f64;
    let x = |step: f64| MARGIN + step / steps * (WIDTH - 2.0 * MARGIN);
    let y = |b: f64| HEIGHT - MARGIN - b / bytes * (HEIGHT - 2.0 * MARGIN);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN}" y="20">arena {} bytes, lower bound {} bytes, {} buffers, {} steps</text>"#,
        plan.arena_bytes,
        plan.lower_bound_bytes,
        plan.buffers.len(),
        plan.schedule.len()
    );
    for b in &plan.buffers {
        let (fill, stroke) = match b.kind {
            BufferKind::Block => ("#9ecae1", "#3182bd"),
            BufferKind::Bordered => ("#fdd0a2", "#e6550d"),
            BufferKind::Single => ("#c7e9c0", "#31a354"),
        };
        let (x0, x1) = (x(b.first as f64), x(b.last as f64 + 1.0));
        let (y0, y1) = (y((b.offset + b.bytes) as f64), y(b.offset as f64));
        let _ = writeln!(
            s,
            r#"<rect x="{x0:.2}" y="{y0:.2}" width="{:.2}" height="{:.2}" fill="{fill}" stroke="{stroke}" stroke-width="0.5"><title>{} ({:?}): {} bytes at {}, steps {}..={}</title></rect>"#,
            (x1 - x0).max(0.5),
            (y1 - y0).max(0.5),
            escape(&b.name),
            b.kind,
            b.bytes,
            b.offset,
            b.first,
            b.last
        );
    }
    let lb = y(plan.lower_bound_bytes as f64);
    let _ = writeln!(
        s,
        r#"<line x1="{MARGIN}" x2="{:.2}" y1="{lb:.2}" y2="{lb:.2}" stroke="red" stroke-dasharray="6,4"/>"#,
        WIDTH - MARGIN
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.2}" y="{:.2}" fill="red" text-anchor="end">lower bound</text>"#,
        WIDTH - MARGIN,
        lb - 4.0
    );
    let (x0, y0, y1) = (MARGIN, y(0.0), y(bytes));
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" x2="{:.2}" y1="{y0:.2}" y2="{y0:.2}" stroke="black"/><line x1="{x0}" x2="{x0}" y1="{y0:.2}" y2="{y1:.2}" stroke="black"/>"#,
        WIDTH - MARGIN
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.2}" y="{:.2}" text-anchor="middle">schedule step</text><text x="15" y="{:.2}" transform="rotate(-90 15 {:.2})" text-anchor="middle">arena offset (bytes)</text>"#,
        WIDTH / 2.0,
        HEIGHT - 20.0,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    s.push_str("</svg>\n");
    s
}

/// The SVG of a planned graph's arena.
pub fn svg_of(g: &ir::Graph) -> Result<String, super::PlanError> {
    Ok(svg(&MemoryPlan::of(g)?))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
