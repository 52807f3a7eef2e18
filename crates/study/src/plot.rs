//! Plots as SVG (plotters), one function per figure of the paper.

use plotters::prelude::*;

use crate::analysis::{Setting, widths};

/// One line of a chart.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points, in x order.
    pub points: Vec<(f64, f64)>,
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// A line chart with markers as an SVG document; `log_x` for cost axes.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> Result<String, String> {
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    if points.is_empty() {
        return Err(format!("{title}: nothing to plot"));
    }
    let (mut x0, mut x1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    if log_x {
        x0 = (x0 * 0.8).max(1e-12);
        x1 *= 1.25;
    } else {
        let pad = ((x1 - x0) * 0.05).max(1e-9);
        x0 -= pad;
        x1 += pad;
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    y0 -= pad;
    y1 += pad;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(56);
        macro_rules! draw {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(x_label)
                    .y_desc(y_label)
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()
                    .map_err(|e| e.to_string())?;
                for (i, s) in series.iter().enumerate() {
                    let color = PALETTE[i % PALETTE.len()];
                    chart
                        .draw_series(LineSeries::new(
                            s.points.iter().copied(),
                            color.stroke_width(2),
                        ))
                        .map_err(|e| e.to_string())?
                        .label(s.label.clone())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                        });
                    chart
                        .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(|e| e.to_string())?;
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(RGBColor(200, 200, 200))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(|e| e.to_string())?;
            }};
        }
        if log_x {
            draw!(
                builder
                    .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                    .map_err(|e| e.to_string())?
            );
        } else {
            draw!(
                builder
                    .build_cartesian_2d(x0..x1, y0..y1)
                    .map_err(|e| e.to_string())?
            );
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// Fig. 8: FID against guidance rate, one line per model, at `steps` steps of `sampler`.
pub fn fid_vs_cfg(settings: &[Setting], sampler: &str, steps: u32) -> Result<String, String> {
    let series: Vec<Series> = widths(settings)
        .into_iter()
        .map(|w| {
            let mut points: Vec<(f64, f64)> = settings
                .iter()
                .filter(|s| s.width == w && s.sampler == sampler && s.steps == steps)
                .map(|s| (s.cfg, s.fid))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label: format!("{w} filters"),
                points,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    line_chart(
        &format!("FID vs guidance, {sampler}, {steps} steps"),
        "classifier-free guidance rate",
        "FID",
        &series,
        false,
    )
}

/// Figs. 9 and 11: FID at the optimal guidance against sampling cost, one line per model.
pub fn fid_vs_cost(optimal: &[Setting], sampler: &str) -> Result<String, String> {
    let series: Vec<Series> = widths(optimal)
        .into_iter()
        .map(|w| {
            let mut points: Vec<(f64, f64)> = optimal
                .iter()
                .filter(|s| s.width == w && s.sampler == sampler)
                .map(|s| (s.cost_gflops, s.fid))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label: format!("{w} filters"),
                points,
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    line_chart(
        &format!("FID vs sampling cost, {sampler} (optimal guidance)"),
        "sampling cost: GFLOPs per image (log)",
        "FID",
        &series,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tests::paper_like;
    use crate::analysis::{optimal_cfg, settings};

    #[test]
    fn charts_are_svg_with_every_model() {
        let s = settings(&paper_like());
        let svg = fid_vs_cfg(&s, "ddim", 4).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("32 filters") && svg.contains("64 filters")
        );
        let svg = fid_vs_cost(&optimal_cfg(&s), "dpmpp-2m").unwrap();
        assert!(
            svg.contains("<polyline") || svg.contains("<path"),
            "{}",
            &svg[..200]
        );
        assert!(fid_vs_cost(&optimal_cfg(&s), "unknown").is_err());
    }
}
