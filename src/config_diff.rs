//! `tributary config diff OLD NEW`: what deploying NEW over OLD will do, before anyone deploys it:
//! whether the event schema change is one the raw files can follow (see
//! `tributary_schemas::lake::schemas`), and per view whether it keeps answering, is rebuilt, is
//! new or goes away.
//!
//! A view whose definition changed is rebuilt by the next batch run while its old definition keeps
//! answering what both share (blue/green, ARCHITECTURE.md §11), when the old definition still reads
//! under the new event schema; what only the new definition has answers 503 `view_building` until
//! the first version under it is published.

use std::fmt::Write;

use tributary_schemas::config::{Config, ViewDef};
use tributary_schemas::duration::format_duration;
use tributary_schemas::lake::schemas::Evolution;

/// The report, and whether NEW can run on a lake OLD wrote.
pub fn diff(old: &Config, new: &Config) -> (String, bool) {
    let mut out = String::new();
    let compatible = match Evolution::between(&old.events, &new.events) {
        Ok(evolution) if evolution.is_empty() => {
            out.push_str("event schema: unchanged\n");
            true
        }
        Ok(evolution) => {
            out.push_str(
                "event schema: compatible (the archiver records it from where it resumes)\n",
            );
            for change in &evolution.changes {
                let _ = writeln!(out, "  {change}");
            }
            true
        }
        Err(incompatible) => {
            let _ = writeln!(
                out,
                "event schema: INCOMPATIBLE, every process with NEW refuses to start on this lake\n  {incompatible}"
            );
            false
        }
    };
    if old.kafka.topic != new.kafka.topic || old.lake.url != new.lake.url {
        let _ = writeln!(
            out,
            "source: topic {} → {}, lake {} → {} (another master dataset: nothing below carries over)",
            old.kafka.topic, new.kafka.topic, old.lake.url, new.lake.url
        );
    }
    for view in &new.views {
        let line = match old.view(&view.name) {
            None => "new: built from the whole lake by the next batch run; until it publishes, queries of it answer 503 view_building (on a lake with no versions yet, the speed layer answers it)".to_owned(),
            Some(before) => view_change(before, view, new),
        };
        let _ = writeln!(out, "view {}: {line}", view.name);
    }
    for view in &old.views {
        if new.view(&view.name).is_none() {
            let _ = writeln!(
                out,
                "view {}: removed: no longer answered (404); its versions stay in the lake",
                view.name
            );
        }
    }
    (out, compatible)
}

fn view_change(before: &ViewDef, after: &ViewDef, new: &Config) -> String {
    if before.definition_hash() != after.definition_hash() {
        let mut what = Vec::new();
        if before.granularity != after.granularity {
            what.push(format!(
                "granularity {} → {}",
                before.granularity, after.granularity
            ));
        }
        let names = |view: &ViewDef| -> Vec<String> {
            view.dimensions.iter().map(|d| d.name.clone()).collect()
        };
        if names(before) != names(after) {
            what.push(format!(
                "dimensions [{}] → [{}]",
                names(before).join(", "),
                names(after).join(", ")
            ));
        }
        let filter = |view: &ViewDef| view.filter.as_ref().map(|f| f.sql.trim().to_owned());
        if filter(before) != filter(after) {
            what.push("filter".to_owned());
        }
        let metrics = |view: &ViewDef| -> Vec<(String, String)> {
            (view.metrics.iter())
                .map(|m| (m.name.clone(), m.expression.clone()))
                .collect()
        };
        for (name, expression) in metrics(after) {
            match metrics(before).iter().find(|(n, _)| *n == name) {
                None => what.push(format!("metric {name} added")),
                Some((_, old)) if *old != expression => what.push(format!("metric {name} changed")),
                Some(_) => {}
            }
        }
        for (name, _) in metrics(before) {
            if !metrics(after).iter().any(|(n, _)| *n == name) {
                what.push(format!("metric {name} removed"));
            }
        }
        if what.is_empty() {
            what.push("field types".to_owned());
        }
        return format!(
            "REBUILT ({}): recomputed from the whole lake by the next batch run; until it publishes, {}",
            what.join(", "),
            meanwhile(before, after, new)
        );
    }
    if before.retention != after.retention {
        let show = |r: Option<std::time::Duration>| r.map_or("all".to_owned(), format_duration);
        return format!(
            "unchanged definition, retention {} → {}: new versions keep that much",
            show(before.retention),
            show(after.retention)
        );
    }
    "unchanged: keeps answering from its versions".to_owned()
}

/// What a rebuilt view answers until its first version under `after` is published: the old
/// definition, read under the new event schema, answers what both share, when it still means
/// what it meant (the same hash: every field it reads keeps its type).
fn meanwhile(before: &ViewDef, after: &ViewDef, new: &Config) -> String {
    let old = ViewDef::from_spec(&before.spec(), &new.events, after.late_after())
        .ok()
        .filter(|old| old.definition_hash() == before.definition_hash());
    let Some(old) = old else {
        return "every query of it answers 503 view_building: its old versions do not read under the new event schema".to_owned();
    };
    let waiting = after.not_answered_by(&old);
    let shared: Vec<&str> = (after.metrics.iter())
        .map(|m| m.name.as_str())
        .filter(|m| !waiting.contains(m))
        .collect();
    let mut line = format!(
        "the old definition answers {} exactly",
        match shared.is_empty() {
            true => "no metric".to_owned(),
            false => shared.join(", "),
        }
    );
    let mut pausing: Vec<String> = waiting.iter().map(|w| w.to_string()).collect();
    if old.granularity != after.granularity {
        match old.granularity.divides(after.granularity) {
            true => pausing.push(format!("SQL reads of time in {}_states", after.name)),
            false => pausing.push(format!("buckets finer than {}", old.granularity)),
        }
    }
    if !pausing.is_empty() {
        line.push_str(&format!(
            "; {} answer 503 view_building",
            pausing.join(", ")
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use tributary_schemas::config::DEFAULT_CONFIG;

    use super::*;

    fn config(text: &str) -> Config {
        Config::from_sources(Some((text, "test")), []).unwrap()
    }

    #[test]
    fn the_report_says_which_views_rebuild_and_whether_the_schema_follows() {
        let old = config(DEFAULT_CONFIG);
        let new = config(
            &DEFAULT_CONFIG
                .replace(
                    "bytes = \"int64\"",
                    "bytes = \"float64\"\nplan = \"string\"",
                )
                .replace(
                    "dimensions = [\"device\", \"referrer\"]",
                    "dimensions = [\"device\"]",
                ),
        );
        let (report, compatible) = diff(&old, &new);
        assert!(compatible, "{report}");
        assert!(report.contains("field \"plan\" (string) added"), "{report}");
        assert!(
            report.contains("field \"bytes\" widened from int64 to float64"),
            "{report}"
        );
        assert!(report.contains("view pageviews: unchanged"), "{report}");
        assert!(
            report.contains("view traffic: REBUILT (dimensions [device, referrer] → [device])"),
            "{report}"
        );
        assert!(
            report.contains("every query of it answers 503 view_building: its old versions do not read under the new event schema"),
            "bytes is read as float64 now, so the old sum(bytes) cannot answer: {report}"
        );
        let added = config(&DEFAULT_CONFIG.replace(
            "bytes = \"sum(bytes)\"",
            "bytes = \"sum(bytes)\"\nreferrals = \"count_distinct(referrer)\"",
        ));
        let (report, _) = diff(&old, &added);
        assert!(
            report.contains("REBUILT (metric referrals added): recomputed from the whole lake by the next batch run; until it publishes, the old definition answers events, sessions, bytes, latency_p50, latency_p99, late exactly; referrals answer 503 view_building"),
            "{report}"
        );
        let (same, compatible) = diff(&old, &old);
        assert!(
            compatible && same.starts_with("event schema: unchanged"),
            "{same}"
        );
        let retyped = config(&DEFAULT_CONFIG.replace("page = \"string\"", "page = \"int64\""));
        let (report, compatible) = diff(&old, &retyped);
        assert!(!compatible);
        assert!(report.contains("INCOMPATIBLE"), "{report}");
    }
}
