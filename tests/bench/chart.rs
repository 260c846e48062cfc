//! The bench's chart: per-run outage of each agent and setting as thin stacked bars
//! (detection below, decision → serving above) with the median marked, one panel per cloud
//! profile, drawn with plotters' SVG backend.

use std::error::Error;
use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{Agent, Run};
use crate::support::lab::Profile;

const ENIPEER: RGBColor = RGBColor(31, 119, 180);
const ENIPEER_LIGHT: RGBColor = RGBColor(158, 202, 225);
const KEEPALIVED: RGBColor = RGBColor(217, 95, 2);
const KEEPALIVED_LIGHT: RGBColor = RGBColor(253, 190, 133);

/// A category label short enough for the x axis.
fn short(agent: Agent) -> String {
    match agent {
        Agent::Enipeer(i, d) => format!("enipeer {i}/{d}"),
        Agent::Keepalived(a) => format!("keepalived {a} s"),
    }
}

/// The bar of one run: `k` of `n` inside category `i`.
fn bar(i: usize, k: usize, n: usize, lo: f64, hi: f64, c: RGBColor) -> Rectangle<(f64, f64)> {
    let slot = 0.7 / n.max(1) as f64;
    let x0 = i as f64 - 0.35 + k as f64 * slot + slot * 0.1;
    Rectangle::new([(x0, lo), (x0 + slot * 0.8, hi)], c.filled())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    profile: Profile,
    runs: &[Run],
) -> Result<(), Box<dyn Error>> {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.profile == profile).collect();
    let top = mine
        .iter()
        .map(|r| r.outage.as_secs_f64())
        .fold(0.5, f64::max)
        * 1.25;
    let caption = match profile {
        Profile::Instant => "instant cloud".to_owned(),
        Profile::AwsLike => {
            "aws-like cloud (attaching 1.5 s, detaching 2 s, hot-plug 0.8 s)".to_owned()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..3.5f64, 0f64..top)?;
    let names: Vec<String> = Agent::ALL.iter().map(|a| short(*a)).collect();
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && (0.0..4.0).contains(&i) {
            names[i as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(9)
        .x_label_formatter(&label)
        .x_label_style(("sans-serif", 13))
        .y_desc("seconds from fault to first answer via the EIP")
        .y_label_formatter(&|y| format!("{y:.1} s"))
        .axis_desc_style(("sans-serif", 14))
        .draw()?;
    runs_and_medians(&mut chart, &mine)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Each run's bar (detection, then decision → serving, in the agent's colours) and the median
/// outage per agent and setting, with their legend entries.
fn runs_and_medians(chart: &mut Chart<'_, '_>, mine: &[&Run]) -> Result<(), Box<dyn Error>> {
    let kinds = [
        (true, false, ENIPEER_LIGHT, "enipeer: detection"),
        (true, true, ENIPEER, "enipeer: decision → serving"),
        (false, false, KEEPALIVED_LIGHT, "keepalived: detection"),
        (false, true, KEEPALIVED, "keepalived: decision → serving"),
    ];
    for (enipeer, upper, color, name) in kinds {
        let mut bars = Vec::new();
        for (i, agent) in Agent::ALL.iter().enumerate() {
            if agent.is_enipeer() != enipeer {
                continue;
            }
            let these: Vec<&&Run> = mine.iter().filter(|r| r.agent == *agent).collect();
            for (k, r) in these.iter().enumerate() {
                let (d, t) = (r.detection.as_secs_f64(), r.outage.as_secs_f64());
                let (lo, hi) = if upper { (d, t) } else { (0.0, d) };
                bars.push(bar(i, k, these.len(), lo, hi, color));
            }
        }
        chart
            .draw_series(bars)?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    let medians = Agent::ALL.iter().enumerate().filter_map(|(i, agent)| {
        let mut v: Vec<f64> = mine
            .iter()
            .filter(|r| r.agent == *agent)
            .map(|r| r.outage.as_secs_f64())
            .collect();
        v.sort_by(f64::total_cmp);
        let m = *v.get(v.len() / 2)?;
        let x = i as f64;
        Some(PathElement::new(
            vec![(x - 0.42, m), (x + 0.42, m)],
            BLACK.stroke_width(2),
        ))
    });
    chart
        .draw_series(medians)?
        .label("median outage")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], BLACK.stroke_width(2)));
    Ok(())
}

/// Writes the chart of `runs` to `path` (SVG), titled with the environment line.
pub fn draw(path: &Path, runs: &[Run], env: &str) -> Result<(), Box<dyn Error>> {
    let root = SVGBackend::new(path, (1400, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "Primary-host failure, each bar one run: enipeer vs keepalived + AWS CLI recipe — {env}"
    );
    let root = root.titled(&title, ("sans-serif", 15))?;
    let halves = root.split_evenly((1, 2));
    for (area, profile) in halves.iter().zip([Profile::Instant, Profile::AwsLike]) {
        panel(area, profile, runs)?;
    }
    root.present()?;
    Ok(())
}
