//! The single-node reference: the same SQL on one DataFusion session, and
//! answers put in a form that compares row for row.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float32Array, Float64Array};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::s3::{Registry, S3Access};

/// DataFusion as it comes, on this machine, reading the same stores.
pub fn single_node_context(s3: Option<S3Access>) -> SessionContext {
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(Registry::new(s3)))
        .build_arc()
        .expect("a runtime with default limits always builds");
    crate::session::with_url_tables(SessionContext::new_with_config_rt(
        SessionConfig::new().with_information_schema(true),
        runtime,
    ))
}

/// Runs `sql` (statements separated by `;`) and returns the last one's answer.
pub async fn run_sql(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, String> {
    let statements = datafusion::sql::parser::DFParser::parse_sql(sql)
        .map_err(|e| crate::error::describe(&e))?;
    let mut last = Vec::new();
    for s in statements {
        let plan = ctx
            .state()
            .statement_to_plan(s)
            .await
            .map_err(|e| crate::error::describe(&e))?;
        last = ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| crate::error::describe(&e))?
            .collect()
            .await
            .map_err(|e| crate::error::describe(&e))?;
    }
    Ok(last)
}

/// Every row as text, columns joined by `|`. Decimals, integers, strings and
/// dates print exactly; floating-point values to 12 significant digits,
/// since a distributed sum adds in another order.
pub fn rows(batches: &[RecordBatch]) -> Result<Vec<String>, String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let columns: Vec<ArrayRef> = b.columns().iter().map(rounded).collect();
        let formatters = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for r in 0..b.num_rows() {
            let cells: Vec<String> = formatters.iter().map(|f| f.value(r).to_string()).collect();
            out.push(cells.join("|"));
        }
    }
    Ok(out)
}

/// The rows, sorted: answers compare equal when they hold the same rows.
pub fn sorted_rows(batches: &[RecordBatch]) -> Result<Vec<String>, String> {
    let mut r = rows(batches)?;
    r.sort_unstable();
    Ok(r)
}

fn rounded(c: &ArrayRef) -> ArrayRef {
    let round = |v: f64| {
        if v == 0.0 || !v.is_finite() {
            return v;
        }
        let digits = 12 - (v.abs().log10().floor() as i32) - 1;
        let scale = 10f64.powi(digits);
        (v * scale).round() / scale
    };
    match c.data_type() {
        DataType::Float64 => {
            let a = c.as_any().downcast_ref::<Float64Array>().expect("Float64");
            Arc::new(a.unary::<_, arrow::datatypes::Float64Type>(round))
        }
        DataType::Float32 => {
            let a = c.as_any().downcast_ref::<Float32Array>().expect("Float32");
            Arc::new(a.unary::<_, arrow::datatypes::Float32Type>(|v| round(v as f64) as f32))
        }
        _ => c.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn rows_are_exact_for_decimals_and_close_for_floats() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("d", DataType::Decimal128(15, 2), false),
            Field::new("f", DataType::Float64, false),
        ]));
        let batch = |f: f64, d: i128| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(vec![Some("a"), None])),
                    Arc::new(
                        Decimal128Array::from(vec![d, 1])
                            .with_precision_and_scale(15, 2)
                            .unwrap(),
                    ),
                    Arc::new(Float64Array::from(vec![f, 2.5])),
                ],
            )
            .unwrap()
        };
        let a = rows(&[batch(0.1 + 0.2, 12345)]).unwrap();
        assert_eq!(a, vec!["a|123.45|0.3", "NULL|0.01|2.5"]);
        // A float summed in another order still matches; a cent off does not.
        assert_eq!(a, rows(&[batch(0.3, 12345)]).unwrap());
        assert_ne!(a, rows(&[batch(0.3, 12346)]).unwrap());
        assert_ne!(a, rows(&[batch(0.31, 12345)]).unwrap());
    }
}
