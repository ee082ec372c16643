//! A hand-written SVG of a report: mean live pool size and nodes below min over time, and the
//! CDFs of detection and recovery times of every fault that measured them.

use crate::report::Report;
use std::fmt::Write as _;

const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// Height of the detection/recovery CDF panel, drawn below the timeline when there are samples.
const CDF_H: f64 = 340.0;
const COLORS: [&str; 6] = ["#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Renders the pool timeline of `report` as an SVG document; fault times are marked.
pub fn svg(report: &Report) -> String {
    let tl = &report.pool.timeline;
    let t_max = tl.iter().map(|x| x.0).max().unwrap_or(0).max(report.sim_ms).max(1) as f64;
    let mean_max = tl.iter().map(|x| x.1).fold(report.pool.min_target as f64, f64::max).max(1.0).ceil();
    let below_max = tl.iter().map(|x| x.2).max().unwrap_or(0).max(1) as f64;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: f64| LEFT + pw * t / t_max;
    let y_mean = |v: f64| TOP + ph * (1.0 - v / mean_max);
    let y_below = |v: f64| TOP + ph * (1.0 - v / below_max);

    let has_cdf = report.faults.iter().any(|f| !f.detect_samples_ms.is_empty() || !f.recover_samples_ms.is_empty());
    let total_h = if has_cdf { H + CDF_H } else { H };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{total_h}" viewBox="0 0 {W} {total_h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{total_h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{} (seed {}) — pool over time</text>"#,
        W / 2.0,
        escape(&report.scenario),
        report.seed
    );
    // Axes and grid.
    let _ = writeln!(s, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##);
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let yy = TOP + ph * (1.0 - f);
        let _ = writeln!(s, r##"<line x1="{LEFT}" x2="{}" y1="{yy}" y2="{yy}" stroke="#ddd"/>"##, LEFT + pw);
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#1f77b4">{:.1}</text>"##,
            LEFT - 6.0,
            yy + 4.0,
            mean_max * f
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#d62728">{:.0}</text>"##,
            LEFT + pw + 6.0,
            yy + 4.0,
            below_max * f
        );
    }
    for i in 0..=6 {
        let t = t_max * f64::from(i) / 6.0;
        let _ =
            writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{:.0}s</text>"#, x(t), TOP + ph + 18.0, t / 1000.0);
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">simulated time</text>"#, LEFT + pw / 2.0, H - 18.0);
    // Minimum target.
    let ym = y_mean(report.pool.min_target as f64);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{}" y1="{ym}" y2="{ym}" stroke="#1f77b4" stroke-dasharray="6 4" opacity="0.6"/>"##,
        LEFT + pw
    );
    // Faults.
    for f in &report.faults {
        let xx = x(f.at as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{xx}" x2="{xx}" y1="{TOP}" y2="{}" stroke="#999" stroke-dasharray="2 3"/>"##,
            TOP + ph
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#555" font-size="10">{}</text>"##,
            xx + 3.0,
            TOP + 12.0,
            escape(&f.kind)
        );
    }
    let series = |pts: Vec<(f64, f64)>, color: &str| {
        let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        format!(r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, d.join(" "))
    };
    let _ = writeln!(s, "{}", series(tl.iter().map(|p| (x(p.0 as f64), y_mean(p.1))).collect(), "#1f77b4"));
    let _ = writeln!(s, "{}", series(tl.iter().map(|p| (x(p.0 as f64), y_below(p.2 as f64))).collect(), "#d62728"));
    // Legend.
    let _ = writeln!(s, r##"<text x="{LEFT}" y="{}" fill="#1f77b4">— mean live pool size (left)</text>"##, TOP - 10.0);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" fill="#d62728" text-anchor="end">— nodes below min (right)</text>"##,
        LEFT + pw,
        TOP - 10.0
    );
    if has_cdf {
        cdf_panel(&mut s, report, H);
    }
    s.push_str("</svg>\n");
    s
}

/// Empirical CDFs of each fault's detection (solid) and recovery (dashed) times, from `y0` down.
fn cdf_panel(s: &mut String, report: &Report, y0: f64) {
    let top = y0 + 40.0;
    let pw = W - LEFT - RIGHT;
    let ph = CDF_H - 40.0 - BOTTOM;
    let t_max = report
        .faults
        .iter()
        .flat_map(|f| f.detect_samples_ms.iter().chain(f.recover_samples_ms.iter()))
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: f64| LEFT + pw * t / t_max;
    let y = |frac: f64| top + ph * (1.0 - frac);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="15">detection (solid) and recovery (dashed) time, CDF over affected nodes</text>"#,
        W / 2.0,
        y0 + 22.0
    );
    let _ = writeln!(s, r##"<rect x="{LEFT}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##);
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let _ = writeln!(s, r##"<line x1="{LEFT}" x2="{}" y1="{}" y2="{}" stroke="#ddd"/>"##, LEFT + pw, y(f), y(f));
        let _ =
            writeln!(s, r#"<text x="{}" y="{}" text-anchor="end">{:.0}%</text>"#, LEFT - 6.0, y(f) + 4.0, f * 100.0);
    }
    for i in 0..=6 {
        let t = t_max * f64::from(i) / 6.0;
        let _ =
            writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">{:.0}s</text>"#, x(t), top + ph + 18.0, t / 1000.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">time since the fault</text>"#,
        LEFT + pw / 2.0,
        y0 + CDF_H - 18.0
    );
    let steps = |v: &[u64]| -> String {
        let n = v.len() as f64;
        let mut pts = vec![format!("{:.1},{:.1}", x(0.0), y(0.0))];
        for (i, t) in v.iter().enumerate() {
            let xx = x(*t as f64);
            pts.push(format!("{xx:.1},{:.1}", y(i as f64 / n)));
            pts.push(format!("{xx:.1},{:.1}", y((i + 1) as f64 / n)));
        }
        pts.join(" ")
    };
    let mut legend_y = top + 14.0;
    for (i, f) in
        report.faults.iter().filter(|f| !f.detect_samples_ms.is_empty() || !f.recover_samples_ms.is_empty()).enumerate()
    {
        let color = COLORS[i % COLORS.len()];
        if !f.detect_samples_ms.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                steps(&f.detect_samples_ms)
            );
        }
        if !f.recover_samples_ms.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="6 4" points="{}"/>"#,
                steps(&f.recover_samples_ms)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{legend_y}" fill="{color}" text-anchor="end">{} at {:.0}s ({} nodes)</text>"#,
            LEFT + pw - 8.0,
            escape(&f.kind),
            f.at as f64 / 1000.0,
            f.affected_nodes
        );
        legend_y += 16.0;
    }
}
