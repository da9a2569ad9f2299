//! `tributary config diff OLD NEW`: what deploying NEW over OLD will do, before anyone deploys it:
//! whether the event schema change is one the raw files can follow (see
//! `tributary_schemas::lake::schemas`), and per view whether it keeps answering, is rebuilt, is
//! new or goes away.
//!
//! It describes Tributary as it behaves today: a view whose definition changed is not answered
//! from its old batch versions (their states mean something else); until the next recompute
//! publishes its first version under the new definition, answers come from the speed layer alone.

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
            None => "new: built from the whole lake by the next batch run; until then answered by the speed layer alone".to_owned(),
            Some(before) => view_change(before, view),
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

fn view_change(before: &ViewDef, after: &ViewDef) -> String {
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
            "REBUILT ({}): recomputed from the whole lake by the next batch run; until it publishes, its answers come from the speed layer alone and miss what the batch layer covered",
            what.join(", ")
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
