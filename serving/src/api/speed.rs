//! `GET /v1/speed/{definition}`: this process's speed states of one view definition, for the
//! serving nodes of a split speed layer (issue 32, ARCHITECTURE.md §8), in the form of
//! `tributary_speed::export`. `?have=0:0-41,2:3-9` lists the sealed `(partition, epoch)` parts the
//! caller already holds, which are not sent again. It needs the `admin` scope: the states are
//! every row of the view, before any caller's row filter.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, App};

#[derive(Debug, Deserialize)]
pub(super) struct Have {
    have: Option<String>,
}

pub(super) async fn states(
    State(app): State<Arc<App>>,
    Path(definition): Path<String>,
    Query(have): Query<Have>,
) -> Result<Response, ApiError> {
    let have = parse_have(have.have.as_deref().unwrap_or(""))
        .map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "bad_have", message))?;
    let speed = app.engine.live().speed();
    match speed.export(&definition, &have) {
        Ok(Some(bytes)) => Ok((
            [(
                header::CONTENT_TYPE,
                "application/vnd.tributary.speed-states",
            )],
            bytes,
        )
            .into_response()),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_definition",
            format!("this speed layer aggregates no view of definition {definition:?}"),
        )),
        Err(error) => Err(ApiError::internal("encoding the speed states", &error)),
    }
}

/// `0:0-41,2:3-9,2:12`: per partition, epochs or inclusive ranges of them.
fn parse_have(text: &str) -> Result<BTreeSet<(i32, i64)>, String> {
    let mut have = BTreeSet::new();
    for item in text.split(',').filter(|i| !i.is_empty()) {
        let bad = || format!("have: {item:?} is not partition:epoch or partition:first-last");
        let (partition, epochs) = item.split_once(':').ok_or_else(bad)?;
        let partition: i32 = partition.parse().map_err(|_| bad())?;
        let (first, last) = epochs.split_once('-').unwrap_or((epochs, epochs));
        let (first, last): (i64, i64) = (
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        );
        if first > last || last - first > 1_000_000 {
            return Err(bad());
        }
        have.extend((first..=last).map(|epoch| (partition, epoch)));
    }
    Ok(have)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_parts_are_partitions_with_epochs_and_ranges() {
        let have = parse_have("0:0-2,2:7").unwrap();
        assert_eq!(
            have.into_iter().collect::<Vec<_>>(),
            [(0, 0), (0, 1), (0, 2), (2, 7)]
        );
        assert!(parse_have("").unwrap().is_empty());
        for bad in ["0", "x:1", "0:3-1", "0:a-b"] {
            assert!(parse_have(bad).is_err(), "{bad}");
        }
    }
}
