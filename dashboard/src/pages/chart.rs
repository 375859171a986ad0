//! SVG charts drawn on the server: one bar per minute of the last hour.

use maud::{Markup, html};

const W: f64 = 360.0;
const H: f64 = 90.0;

/// A bar chart of `values` (oldest first) titled `title`, in `color`.
pub fn bars(title: &str, values: &[f64], color: &str, unit: &str) -> Markup {
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let n = values.len().max(1) as f64;
    let bar = W / n;
    let last = values.last().copied().unwrap_or(0.0);
    html! {
        figure style="margin:0" {
            figcaption { strong { (title) } span.muted { " — max " (fmt(max)) (unit) ", last minute " (fmt(last)) (unit) } }
            svg width=(W) height=(H + 14.0) viewBox={ "0 0 " (W) " " (H + 14.0) } role="img" aria-label=(title) {
                @for (i, v) in values.iter().enumerate() {
                    @let h = if max > 0.0 { v / max * (H - 4.0) } else { 0.0 };
                    rect x=(format!("{:.1}", i as f64 * bar + 0.5)) y=(format!("{:.1}", H - h))
                        width=(format!("{:.1}", (bar - 1.0).max(0.5))) height=(format!("{h:.1}")) fill=(color) {
                        title { (format!("{} min ago: {}{unit}", values.len() - 1 - i, fmt(*v))) }
                    }
                }
                line x1="0" y1=(H) x2=(W) y2=(H) stroke="#98a1b3" {}
                text x="0" y=(H + 12.0) font-size="10" fill="#6b7385" { "−60 min" }
                text x=(W - 24.0) y=(H + 12.0) font-size="10" fill="#6b7385" { "now" }
            }
        }
    }
}

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}
