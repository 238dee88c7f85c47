//! `bench-plot`: draws the scaling curves of `loadtest/curves.sh` as SVG.
//!
//! Input is one JSON chart description (from the file named on the command
//! line) so the script that gathers the measurements decides what to plot and
//! the drawing stays in one place:
//!
//! ```json
//! {"title": "...", "x_label": "...", "y_label": "...", "log_x": true, "log_y": false,
//!  "series": [{"name": "gateway", "points": [[1000, 7.5], [2000, 7.1]]}]}
//! ```

use anyhow::Context as _;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct Chart {
    title: String,
    x_label: String,
    y_label: String,
    #[serde(default)]
    log_x: bool,
    #[serde(default)]
    log_y: bool,
    series: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: bench-plot CHART.json OUT.svg");
    };
    let chart: Chart = serde_json::from_str(
        &std::fs::read_to_string(&input).with_context(|| format!("read {input}"))?,
    )
    .with_context(|| format!("parse {input}"))?;
    let svg = draw(&chart)?;
    std::fs::write(&output, svg).with_context(|| format!("write {output}"))?;
    Ok(())
}

/// The data's extent, padded; log axes start at the smallest positive value.
fn extent(values: impl Iterator<Item = f64> + Clone, log: bool) -> (f64, f64) {
    let max = values.clone().fold(f64::MIN, f64::max);
    if log {
        let min = values.filter(|v| *v > 0.0).fold(f64::MAX, f64::min);
        let (min, max) = if min > max { (1.0, 10.0) } else { (min, max) };
        (min / 1.5, max * 1.5)
    } else {
        (0.0, if max > 0.0 { max * 1.1 } else { 1.0 })
    }
}

fn draw(c: &Chart) -> anyhow::Result<String> {
    let xs = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = c.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (x0, x1) = extent(xs, c.log_x);
    let (y0, y1) = extent(ys, c.log_y);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (760, 420)).into_drawing_area();
        root.fill(&WHITE)?;
        match (c.log_x, c.log_y) {
            (false, false) => plot(&root, c, x0..x1, y0..y1)?,
            (true, false) => plot(&root, c, (x0..x1).log_scale(), y0..y1)?,
            (false, true) => plot(&root, c, x0..x1, (y0..y1).log_scale())?,
            (true, true) => plot(&root, c, (x0..x1).log_scale(), (y0..y1).log_scale())?,
        }
        root.present()?;
    }
    Ok(svg)
}

fn plot<X, Y>(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    c: &Chart,
    x: X,
    y: Y,
) -> anyhow::Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .caption(&c.title, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(&c.x_label)
        .y_desc(&c.y_label)
        .draw()?;
    for (i, s) in c.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(&s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    Ok(())
}
