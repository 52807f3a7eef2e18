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

/// An error bar: `(x, low, high)`.
pub type Interval = (f64, f64, f64);

/// An axis label: at most 3 decimals, without trailing zeros (log axes otherwise print
/// rounding noise such as 0.30000000000000004).
fn tick(v: f64) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// A line chart with markers as an SVG document; `log_x` for cost axes.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
) -> Result<String, String> {
    line_chart_with_intervals(title, x_label, y_label, series, &[], log_x)
}

/// [`line_chart`] with error bars: `intervals[i]` holds `(x, low, high)` for series `i`, drawn
/// as vertical bars over a shaded band (missing entries: none).
pub fn line_chart_with_intervals(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    intervals: &[Vec<Interval>],
    log_x: bool,
) -> Result<String, String> {
    let chart = LineChart {
        title,
        x_label,
        y_label,
        series,
        intervals,
        log_x,
    };
    chart.svg()
}

/// Chart size in pixels (SVG user units).
const SIZE: (u32, u32) = (720, 440);

/// A line chart, rendered as SVG (for the HTML report) or PNG (for files people open).
pub struct LineChart<'a> {
    /// Caption.
    pub title: &'a str,
    /// X axis label.
    pub x_label: &'a str,
    /// Y axis label.
    pub y_label: &'a str,
    /// The lines.
    pub series: &'a [Series],
    /// Error bars per series (may be shorter than `series`).
    pub intervals: &'a [Vec<Interval>],
    /// Logarithmic x axis (cost axes).
    pub log_x: bool,
}

impl LineChart<'_> {
    /// The chart as an SVG document.
    pub fn svg(&self) -> Result<String, String> {
        register_fonts()?;
        let mut svg = String::new();
        self.draw(SVGBackend::with_string(&mut svg, SIZE).into_drawing_area())?;
        Ok(svg)
    }

    /// The chart as a PNG file's bytes (text set in the embedded DejaVu Sans, so no system
    /// font is needed).
    pub fn png(&self) -> Result<Vec<u8>, String> {
        register_fonts()?;
        let (w, h) = SIZE;
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        self.draw(BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area())?;
        let mut png = Vec::new();
        image::write_buffer_with_format(
            &mut std::io::Cursor::new(&mut png),
            &rgb,
            w,
            h,
            image::ExtendedColorType::Rgb8,
            image::ImageFormat::Png,
        )
        .map_err(|e| format!("{}: PNG encoding: {e}", self.title))?;
        Ok(png)
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), String> {
        let Self {
            title,
            x_label,
            y_label,
            series,
            intervals,
            log_x,
        } = *self;
        let no_bars = Vec::new();
        let bars = |i: usize| intervals.get(i).unwrap_or(&no_bars);
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
            .map(|p| (p.1, p.1))
            .chain(intervals.iter().flatten().map(|&(_, lo, hi)| (lo, hi)))
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.1)));
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
                    .x_label_formatter(&|v| tick(*v))
                    .y_label_formatter(&|v| tick(*v))
                    .light_line_style(RGBColor(235, 235, 235))
                    .draw()
                    .map_err(|e| e.to_string())?;
                for (i, s) in series.iter().enumerate() {
                    let color = PALETTE[i % PALETTE.len()];
                    let bars = bars(i);
                    if bars.len() >= 2 {
                        let band: Vec<(f64, f64)> = bars
                            .iter()
                            .map(|&(x, _, hi)| (x, hi))
                            .chain(bars.iter().rev().map(|&(x, lo, _)| (x, lo)))
                            .collect();
                        chart
                            .draw_series(std::iter::once(Polygon::new(
                                band,
                                color.mix(0.12).filled(),
                            )))
                            .map_err(|e| e.to_string())?;
                    }
                    chart
                        .draw_series(bars.iter().map(|&(x, lo, hi)| {
                            PathElement::new(vec![(x, lo), (x, hi)], color.stroke_width(1))
                        }))
                        .map_err(|e| e.to_string())?;
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
        Ok(())
    }
}

/// plotters measures text with the registered font, for SVG too: DejaVu Sans, embedded.
fn register_fonts() -> Result<(), String> {
    static REGISTERED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            for (style, bytes) in [
                (FontStyle::Normal, dejavu::sans::regular()),
                (FontStyle::Bold, dejavu::sans::bold()),
            ] {
                plotters::style::register_font("sans-serif", style, bytes)
                    .map_err(|_| "the embedded DejaVu Sans font did not load".to_string())?;
            }
            Ok(())
        })
        .clone()
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

/// A setting's value with its interval, as a chart shows it.
type Reading = fn(&Setting) -> Option<(f64, Option<crate::bootstrap::FidCi>)>;

/// Figs. 9 and 11: FID at the optimal guidance against sampling cost, one line per model.
pub fn fid_vs_cost(optimal: &[Setting], sampler: &str) -> Result<String, String> {
    let title = format!("FID vs sampling cost, {sampler} (optimal guidance, 95% CI)");
    let labels = (COST_AXIS, "FID");
    metric_vs_cost(
        optimal,
        sampler,
        |s| Some((s.fid, s.fid_ci)),
        &title,
        labels,
    )
}

/// KID x 10^3 against sampling cost at the FID-optimal guidance, one line per model (Figs.
/// 9, 11 read with the small-sample-unbiased distance).
pub fn kid_vs_cost(optimal: &[Setting], sampler: &str) -> Result<String, String> {
    let title = format!("KID x 10^3 vs sampling cost, {sampler} (FID-optimal guidance, 95% CI)");
    let milli = |s: &Setting| {
        let ci = s.kid_ci.map(|c| crate::bootstrap::FidCi {
            low: c.low * 1e3,
            high: c.high * 1e3,
            ..c
        });
        s.kid.map(|k| (k * 1e3, ci))
    };
    metric_vs_cost(optimal, sampler, milli, &title, (COST_AXIS, "KID x 10^3"))
}

/// The sampling-cost axis of Figs. 9 and 11.
const COST_AXIS: &str = "sampling cost: GFLOPs per image (log)";

/// One line per model of `read` against sampling cost, with error bars where measured;
/// `(x_label, y_label)`.
pub(crate) fn metric_vs_cost(
    optimal: &[Setting],
    sampler: &str,
    read: Reading,
    title: &str,
    (x_label, y_label): (&str, &str),
) -> Result<String, String> {
    let (series, intervals): (Vec<Series>, Vec<Vec<Interval>>) = widths(optimal)
        .into_iter()
        .map(|w| {
            let mut readings: Vec<(f64, f64, Option<crate::bootstrap::FidCi>)> = optimal
                .iter()
                .filter(|s| s.width == w && s.sampler == sampler)
                .filter_map(|s| read(s).map(|(v, ci)| (s.cost_gflops, v, ci)))
                .collect();
            readings.sort_by(|a, b| a.0.total_cmp(&b.0));
            let points = readings.iter().map(|r| (r.0, r.1)).collect();
            let bars = readings
                .iter()
                .filter_map(|r| r.2.map(|ci| (r.0, ci.low, ci.high)))
                .collect();
            let label = format!("{w} filters");
            (Series { label, points }, bars)
        })
        .filter(|(s, _)| !s.points.is_empty())
        .unzip();
    line_chart_with_intervals(title, x_label, y_label, &series, &intervals, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::tests::paper_like;
    use crate::analysis::{optimal_cfg, settings};

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(0.0001), "0");
        assert_eq!(tick(12.345), "12.345");
    }

    #[test]
    fn png_charts_decode_and_show_their_lines() {
        let series = [
            Series {
                label: "8 filters".into(),
                points: vec![(1.0, 1.0), (2.0, 0.5), (3.0, 0.25)],
            },
            Series {
                label: "16 filters".into(),
                points: vec![(1.0, 0.9), (2.0, 0.3), (3.0, 0.1)],
            },
        ];
        let chart = LineChart {
            title: "Training loss",
            x_label: "step",
            y_label: "loss",
            series: &series,
            intervals: &[],
            log_x: false,
        };
        let png = chart.png().unwrap();
        let image = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(image.dimensions(), SIZE);
        // The first two palette colours are drawn, and text (dark pixels) is set.
        let has = |c: RGBColor| image.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(PALETTE[0]) && has(PALETTE[1]));
        assert!(
            image
                .pixels()
                .filter(|p| p.0.iter().all(|&v| v < 60))
                .count()
                > 200
        );
        let empty = LineChart {
            series: &[],
            ..chart
        };
        assert!(empty.png().unwrap_err().contains("nothing to plot"));
    }

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
        // With intervals: a shaded band and a bar per point, the axis stretched to hold them.
        let mut with_ci = optimal_cfg(&s);
        for x in &mut with_ci {
            x.fid_ci = Some(crate::bootstrap::FidCi {
                low: x.fid - 50.0,
                high: x.fid + 50.0,
                method: crate::bootstrap::CiMethod::Bootstrap,
                replicates: 10,
            });
        }
        let plain = fid_vs_cost(&optimal_cfg(&s), "ddim").unwrap();
        let banded = fid_vs_cost(&with_ci, "ddim").unwrap();
        assert!(banded.contains("<polygon") && !plain.contains("<polygon"));
        assert!(banded.matches("<polyline").count() > plain.matches("<polyline").count());
    }

    /// The KID chart draws KID x 10^3: with KID = FID / 1000 its lines are the FID chart's.
    #[test]
    fn kid_charts_show_kid_in_thousandths() {
        let mut opt = optimal_cfg(&settings(&paper_like()));
        let none = kid_vs_cost(&opt, "ddim").unwrap_err();
        assert!(none.contains("nothing to plot"), "{none}");
        for x in &mut opt {
            x.kid = Some(x.fid / 1000.0);
        }
        let lines = |svg: &str| -> Vec<String> {
            let tag = |p: &str| p[..p.find("/>").unwrap_or(p.len())].to_string();
            svg.split("<polyline").skip(1).map(tag).collect()
        };
        let kid = kid_vs_cost(&opt, "ddim").unwrap();
        assert!(kid.contains("KID x 10^3"));
        assert_eq!(lines(&kid), lines(&fid_vs_cost(&opt, "ddim").unwrap()));
    }
}
