//! Draw a [`MemoryPlan`]: time (schedule steps) across, arena bytes up;
//! each buffer a rectangle over its lifetime and byte range, coloured by
//! kind, with its name and size as a tooltip. A dashed line marks the lower
//! bound, so the gap between packing and bound can be seen. A legend names
//! the colours; both axes carry ticks (steps, and bytes in KiB/MiB/GiB).

use super::report::{BufferKind, MemoryPlan};
use std::fmt::Write;

const WIDTH: f64 = 1200.0;
const HEIGHT: f64 = 600.0;
const MARGIN: f64 = 60.0;

/// Fill, stroke and legend text of each buffer kind.
const KINDS: [(BufferKind, &str, &str, &str); 3] = [
    (
        BufferKind::Block,
        "#9ecae1",
        "#3182bd",
        "dense block (in-place concat)",
    ),
    (
        BufferKind::Bordered,
        "#fdd0a2",
        "#e6550d",
        "tensor with a zero border",
    ),
    (BufferKind::Single, "#c7e9c0", "#31a354", "tensor"),
];

/// About `target` round tick values from 0 to `max`: the smallest step of 1, 2 or 5 times a
/// power of ten (below `base`, then times a power of `base`: 1024 for bytes) that gives at most
/// `target` intervals.
fn ticks(max: f64, target: f64, base: f64) -> Vec<f64> {
    let raw = (max / target).max(1.0);
    let mut step = f64::INFINITY;
    let mut unit = 1.0;
    loop {
        let mut mag = 1.0;
        while mag * unit <= raw * 10.0 {
            for m in [1.0, 2.0, 5.0] {
                let st = m * mag * unit;
                if (base <= 1.0 || m * mag <= base / 2.0) && st >= raw && st < step {
                    step = st;
                }
            }
            mag *= 10.0;
        }
        if base <= 1.0 || unit > raw {
            break;
        }
        unit *= base;
    }
    if !step.is_finite() || max <= 0.0 {
        return vec![0.0];
    }
    (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|&v| v <= max * 1.000_001)
        .collect()
}

/// `0`, `512 B`, `64 KiB`, `6.5 MiB`.
fn human_bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if b == 0.0 {
        "0".into()
    } else if v.fract() == 0.0 {
        format!("{v:.0} {}", units[i])
    } else {
        format!("{v:.1} {}", units[i])
    }
}

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
        let (fill, stroke) = KINDS
            .iter()
            .find(|k| k.0 == b.kind)
            .map_or(("#dddddd", "#888888"), |k| (k.1, k.2));
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
    // Ticks: schedule steps along the bottom, arena bytes up the left.
    for t in ticks(steps, 10.0, 1.0) {
        let tx = x(t);
        let _ = writeln!(
            s,
            r#"<line x1="{tx:.2}" x2="{tx:.2}" y1="{y0:.2}" y2="{:.2}" stroke="black"/><text x="{tx:.2}" y="{:.2}" text-anchor="middle" font-size="10">{t}</text>"#,
            y0 + 5.0,
            y0 + 17.0
        );
    }
    for t in ticks(bytes, 8.0, 1024.0) {
        let ty = y(t);
        let _ = writeln!(
            s,
            r#"<line x1="{:.2}" x2="{x0}" y1="{ty:.2}" y2="{ty:.2}" stroke="black"/><text x="{:.2}" y="{:.2}" text-anchor="end" font-size="10">{}</text>"#,
            x0 - 5.0,
            x0 - 7.0,
            ty + 3.0,
            human_bytes(t)
        );
    }
    // The legend, one row between the title and the plot.
    for (i, (_, fill, stroke, what)) in KINDS.iter().enumerate() {
        let (lx, ly) = (MARGIN + 230.0 * i as f64, 32.0);
        let _ = writeln!(
            s,
            r#"<g class="legend"><rect x="{lx:.2}" y="{ly:.2}" width="12" height="12" fill="{fill}" stroke="{stroke}"/><text x="{:.2}" y="{:.2}">{what}</text></g>"#,
            lx + 18.0,
            ly + 10.0
        );
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn ticks_are_round_and_cover_the_axis() {
        assert_eq!(super::ticks(127.0, 10.0, 1.0)[..3], [0.0, 20.0, 40.0]);
        let b = super::ticks(7_024_640.0, 8.0, 1024.0);
        assert_eq!(b[1], 1024.0 * 1024.0, "{b:?}");
        assert!(
            b.last().is_some_and(|&l| l <= 7_024_640.0) && b.len() >= 4,
            "{b:?}"
        );
        assert_eq!(super::human_bytes(1024.0 * 1024.0), "1 MiB");
        assert_eq!(super::human_bytes(0.0), "0");
    }
}
