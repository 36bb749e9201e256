//! Printing results for people (text) and programs (JSON).

use std::io::Cursor;

use arrow::array::Array;
use arrow::ipc::reader::StreamReader;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use daskrs_core::DataFormat;

use crate::Output;

/// Values of an Arrow result as display strings, at most `limit` of them, and the total count.
pub fn values(o: &Output, limit: usize) -> Result<(Vec<String>, usize), String> {
    let reader = StreamReader::try_new(Cursor::new(&o.bytes[..]), None)
        .map_err(|e| format!("corrupt Arrow IPC stream: {e}"))?;
    let mut out = Vec::new();
    let mut total = 0;
    let opts = FormatOptions::default().with_null("null");
    for batch in reader {
        let batch = batch.map_err(|e| format!("corrupt Arrow IPC stream: {e}"))?;
        if batch.num_columns() == 0 {
            continue;
        }
        let a = batch.column(0);
        total += a.len();
        let f = ArrayFormatter::try_new(a.as_ref(), &opts).map_err(|e| e.to_string())?;
        for i in 0..a.len() {
            if out.len() >= limit {
                break;
            }
            out.push(f.value(i).to_string());
        }
    }
    Ok((out, total))
}

/// `key = [1, 2, 3]`, shortened for long arrays.
pub fn text(o: &Output) -> String {
    match o.format {
        DataFormat::Arrow => match values(o, 10) {
            Ok((vals, 1)) => format!("{} = {}", o.key, vals[0]),
            Ok((vals, total)) => {
                let more = if total > vals.len() {
                    format!(", ... ({total} values)")
                } else {
                    String::new()
                };
                format!("{} = [{}{more}]", o.key, vals.join(", "))
            }
            Err(e) => format!("{} = <unreadable Arrow data: {e}>", o.key),
        },
        _ => format!("{} = <{} bytes>", o.key, o.bytes.len()),
    }
}

/// `{"key": [values...]}` with every value; opaque results as their size.
pub fn json(outputs: &[Output]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for o in outputs {
        let v = match o.format {
            DataFormat::Arrow => match values(o, usize::MAX) {
                Ok((vals, _)) => serde_json::Value::Array(
                    vals.into_iter()
                        .map(|s| {
                            serde_json::from_str::<serde_json::Number>(&s)
                                .map(serde_json::Value::Number)
                                .unwrap_or(serde_json::Value::String(s))
                        })
                        .collect(),
                ),
                Err(e) => serde_json::json!({ "error": e }),
            },
            _ => serde_json::json!({ "bytes": o.bytes.len() }),
        };
        map.insert(o.key.clone(), v);
    }
    serde_json::Value::Object(map)
}
