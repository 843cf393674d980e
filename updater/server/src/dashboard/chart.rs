//! The dashboard's chart of versions over time: how many machines ran each version, per hour (or
//! per day for longer spans), reconstructed from each instance's event history and its last
//! check-in, and drawn as stacked bars in inline SVG on the server (no script, nothing fetched).

use std::collections::BTreeMap;

use crate::clock::Timestamp;
use crate::engine::error::EngineError;
use crate::engine::Engine;
use crate::model::{Instance, InstanceEvent};
use crate::rollout::compare_versions;

use super::text::{datetime, escape};

/// The most machines whose history is read for the chart (by machine id); the history is one
/// store query per machine, so a huge fleet's chart shows this sample and says so.
pub const MAX_MACHINES: usize = 2000;

/// The newest events read per machine.
const EVENTS_PER_MACHINE: u32 = 200;

/// The most bars drawn; older time is left out.
const MAX_BUCKETS: u64 = 90;

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Colours of the versions, in version order; repeated beyond eight versions.
const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

/// The colour of the `index`th version.
pub fn color(index: usize) -> &'static str {
    PALETTE[index % PALETTE.len()]
}

/// One version's machine count per bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub version: String,
    pub counts: Vec<usize>,
}

/// Machines per version per time bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chart {
    /// Start of the first bucket (a whole hour or day, UTC).
    pub start: Timestamp,
    /// Bucket length: an hour, or a day when the history spans more than two days.
    pub step: u64,
    pub buckets: usize,
    /// In version order, oldest first.
    pub series: Vec<Series>,
    /// Machines whose history the chart shows, and how many the app has.
    pub machines_shown: usize,
    pub machines_total: usize,
}

/// What is known of one machine's versions: the version it ran before its first record, then
/// (time, version) points, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    pub before: String,
    pub points: Vec<(Timestamp, String)>,
}

impl Timeline {
    /// From a machine's events (newest first, as the store returns them) and its last check-in.
    /// Before its first record a machine is taken to have run the version that record says it
    /// left (an update event's previous version), or else the version the record shows.
    pub fn new(instance: &Instance, events_newest_first: &[InstanceEvent]) -> Self {
        let mut points: Vec<(Timestamp, String)> = events_newest_first
            .iter()
            .rev()
            .map(|e| (e.at, label(&e.version)))
            .collect();
        points.push((instance.last_check, label(&instance.version)));
        // Stable: events at the same second keep the order they happened in.
        points.sort_by_key(|(at, _)| *at);
        let before = events_newest_first
            .last()
            .and_then(|e| e.previous_version.as_deref())
            .filter(|v| !v.is_empty())
            .map(label)
            .unwrap_or_else(|| points[0].1.clone());
        Self { before, points }
    }

    /// The version the machine ran at `t`.
    fn at(&self, t: Timestamp) -> &str {
        self.points
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map_or(self.before.as_str(), |(_, v)| v.as_str())
    }
}

fn label(version: &str) -> String {
    if version.is_empty() {
        "unknown".to_owned()
    } else {
        version.to_owned()
    }
}

/// Reads the history of an app's machines (the first [`MAX_MACHINES`] by id) and buckets it.
/// Blocking: one store query per machine.
pub fn from_history(
    engine: &Engine,
    app_id: &str,
    instances: &[Instance],
    now: Timestamp,
) -> Result<Chart, EngineError> {
    let mut timelines = Vec::with_capacity(instances.len().min(MAX_MACHINES));
    for instance in instances.iter().take(MAX_MACHINES) {
        let events = match engine.instance(app_id, &instance.machine_id, EVENTS_PER_MACHINE) {
            Ok((_, events)) => events,
            // Expired between listing and reading: it simply drops out of the chart.
            Err(EngineError::Invalid { .. }) => continue,
            Err(err) => return Err(err),
        };
        timelines.push(Timeline::new(instance, &events));
    }
    let mut chart = build(&timelines, now);
    chart.machines_total = instances.len();
    Ok(chart)
}

/// Buckets timelines from the hour (or day) of the earliest record up to `now`.
pub fn build(timelines: &[Timeline], now: Timestamp) -> Chart {
    let earliest = timelines
        .iter()
        .filter_map(|t| t.points.first().map(|(at, _)| *at))
        .min()
        .unwrap_or(now)
        .min(now);
    let step = if now - earliest > 2 * DAY { DAY } else { HOUR };
    let last = now / step;
    let first = (earliest / step).max(last.saturating_sub(MAX_BUCKETS - 1));
    let buckets = (last - first + 1) as usize;
    let start = first * step;
    let mut counts: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for timeline in timelines {
        for bucket in 0..buckets {
            let end = (start + (bucket as u64 + 1) * step - 1).min(now);
            let version = timeline.at(end);
            counts
                .entry(version.to_owned())
                .or_insert_with(|| vec![0; buckets])[bucket] += 1;
        }
    }
    let mut series: Vec<Series> = counts
        .into_iter()
        .map(|(version, counts)| Series { version, counts })
        .collect();
    series.sort_by(|a, b| compare_versions(&a.version, &b.version).then(a.version.cmp(&b.version)));
    Chart {
        start,
        step,
        buckets,
        series,
        machines_shown: timelines.len(),
        machines_total: timelines.len(),
    }
}

/// Plot geometry, in SVG user units.
const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 48.0;
const TOP: f64 = 12.0;
const PLOT_W: f64 = 700.0;
const PLOT_H: f64 = 180.0;

impl Chart {
    /// The highest stack.
    fn max_total(&self) -> usize {
        (0..self.buckets)
            .map(|b| self.series.iter().map(|s| s.counts[b]).sum::<usize>())
            .max()
            .unwrap_or(0)
    }

    /// The chart as an `<svg>` element. Coordinates are printed with two decimals, so the same
    /// chart always gives the same bytes.
    pub fn svg(&self) -> String {
        let mut out = format!(
            "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
             width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"machines per version over time\">\n"
        );
        let max = self.max_total();
        if max == 0 {
            out.push_str(&format!(
                "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\" fill=\"#666\">no machines have checked in yet</text>\n",
                LEFT + PLOT_W / 2.0,
                TOP + PLOT_H / 2.0
            ));
        } else {
            self.bars(&mut out, max);
        }
        self.axes(&mut out, max);
        out.push_str("</svg>");
        out
    }

    fn bars(&self, out: &mut String, max: usize) {
        let bar_w = PLOT_W / self.buckets as f64;
        let unit = PLOT_H / max as f64;
        for bucket in 0..self.buckets {
            let x = LEFT + bucket as f64 * bar_w;
            let when = datetime(self.start + bucket as u64 * self.step);
            let mut stacked = 0usize;
            for (index, series) in self.series.iter().enumerate() {
                let n = series.counts[bucket];
                if n == 0 {
                    continue;
                }
                let y = TOP + PLOT_H - (stacked + n) as f64 * unit;
                out.push_str(&format!(
                    "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"{}\">\
                     <title>{}: {n} machine(s) from {}</title></rect>\n",
                    (bar_w - 1.0).max(0.5),
                    n as f64 * unit,
                    color(index),
                    escape(&series.version),
                    escape(&when),
                ));
                stacked += n;
            }
        }
    }

    fn axes(&self, out: &mut String, max: usize) {
        let bottom = TOP + PLOT_H;
        out.push_str(&format!(
            "<line x1=\"{LEFT:.2}\" y1=\"{bottom:.2}\" x2=\"{:.2}\" y2=\"{bottom:.2}\" stroke=\"#444\"/>\n\
             <line x1=\"{LEFT:.2}\" y1=\"{TOP:.2}\" x2=\"{LEFT:.2}\" y2=\"{bottom:.2}\" stroke=\"#444\"/>\n",
            LEFT + PLOT_W
        ));
        let label = |x: f64, y: f64, anchor: &str, text: &str| {
            format!(
                "<text x=\"{x:.2}\" y=\"{y:.2}\" text-anchor=\"{anchor}\" font-size=\"11\" fill=\"#333\">{}</text>\n",
                escape(text)
            )
        };
        out.push_str(&label(LEFT - 6.0, bottom, "end", "0"));
        out.push_str(&label(LEFT - 6.0, TOP + 10.0, "end", &max.to_string()));
        let unit = if self.step == DAY {
            "per day"
        } else {
            "per hour"
        };
        out.push_str(&label(LEFT, bottom + 16.0, "start", &datetime(self.start)));
        out.push_str(&label(
            LEFT + PLOT_W,
            bottom + 16.0,
            "end",
            &datetime(self.start + (self.buckets as u64 - 1) * self.step),
        ));
        out.push_str(&label(
            LEFT + PLOT_W / 2.0,
            bottom + 32.0,
            "middle",
            &format!("machines per version, {unit} (UTC)"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(before: &str, points: &[(Timestamp, &str)]) -> Timeline {
        Timeline {
            before: before.into(),
            points: points.iter().map(|(t, v)| (*t, (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn buckets_versions_per_hour() {
        let now = 10 * HOUR + 1800;
        let machines = [
            timeline("1.0", &[(8 * HOUR, "1.0"), (9 * HOUR + 5, "1.1")]),
            timeline("1.0", &[(8 * HOUR + 100, "1.0")]),
        ];
        let chart = build(&machines, now);
        assert_eq!(
            (chart.start, chart.step, chart.buckets),
            (8 * HOUR, HOUR, 3)
        );
        assert_eq!(
            chart.series,
            vec![
                Series {
                    version: "1.0".into(),
                    counts: vec![2, 1, 1]
                },
                Series {
                    version: "1.1".into(),
                    counts: vec![0, 1, 1]
                },
            ]
        );
        assert_eq!(chart.max_total(), 2);
    }

    #[test]
    fn long_spans_go_per_day_and_are_capped() {
        let now = 400 * DAY;
        let chart = build(&[timeline("1.0", &[(0, "1.0")])], now);
        assert_eq!(chart.step, DAY);
        assert_eq!(chart.buckets as u64, MAX_BUCKETS);
        assert_eq!(chart.start, (400 - MAX_BUCKETS + 1) * DAY);
    }

    #[test]
    fn versions_sort_numerically_and_svg_is_escaped() {
        let chart = build(
            &[
                timeline("1.10", &[(0, "1.10")]),
                timeline("1.9", &[(0, "1.9")]),
                timeline("<b>", &[(0, "<b>")]),
            ],
            HOUR,
        );
        let order: Vec<&str> = chart.series.iter().map(|s| s.version.as_str()).collect();
        assert_eq!(order[..2], ["1.9", "1.10"]);
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"));
        assert_eq!(svg, chart.svg(), "same chart, same bytes");
    }

    #[test]
    fn an_empty_fleet_draws_a_note() {
        let chart = build(&[], 5 * HOUR);
        assert_eq!(chart.buckets, 1);
        assert!(chart.svg().contains("no machines have checked in yet"));
    }
}
