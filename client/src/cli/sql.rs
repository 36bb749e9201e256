//! `daskrs sql`: run SQL on the cluster and print or save the answer.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::Instant;

use arrow::record_batch::RecordBatch;
use daskrs_client::sql::{Answer, Plan};

use super::{Failure, SqlArgs};
use crate::cli::run::{progress_bar, show_progress};

pub async fn sql(a: SqlArgs) -> Result<(), Failure> {
    let text = match (&a.sql, &a.file) {
        (Some(s), None) if s == "-" => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| {
                Failure::new(2, format!("cannot read SQL from standard input: {e}"))
            })?;
            s
        }
        (Some(s), None) => s.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| Failure::new(2, format!("cannot read {}: {e}", f.display())))?,
        (Some(_), Some(_)) => return Err(Failure::new(2, "give SQL text or --file, not both")),
        (None, None) => {
            return Err(Failure::new(
                2,
                "give SQL text, - for standard input, or --file",
            ));
        }
    };
    let format = output_format(a.format.as_deref(), a.output.as_deref())?;
    let client = a.target.connect().await?;
    if a.explain {
        match client.plan_sql(&text).await? {
            Plan::Query { explain, .. } => print!("{explain}"),
            Plan::Local(_) => {
                println!("(runs on the scheduler: it only reads or changes the catalog)")
            }
        }
        return Ok(());
    }
    let bar = progress_bar(!a.no_progress);
    let started = Instant::now();
    let answer = client
        .sql(&text, |p| show_progress(&bar, p, "stage tasks "))
        .await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let answer = answer?;
    let elapsed = started.elapsed().as_secs_f64();
    match &a.output {
        Some(path) => {
            write_file(path, &format, &answer)?;
            eprintln!(
                "{} rows written to {} in {elapsed:.3}s",
                answer.rows(),
                path.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            write(&mut out, &format, &answer)?;
            if format == "table" && std::io::stderr().is_terminal() {
                eprintln!(
                    "{} rows in {elapsed:.3}s ({} stages, {} tasks)",
                    answer.rows(),
                    answer.stages,
                    answer.tasks
                );
            }
        }
    }
    Ok(())
}

fn output_format(format: Option<&str>, output: Option<&Path>) -> Result<String, Failure> {
    let from_ext = output
        .and_then(|p| p.extension())
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let f = match (format, from_ext.as_deref()) {
        (Some(f), _) => f.to_string(),
        (None, Some(e @ ("csv" | "json" | "parquet"))) => e.to_string(),
        (None, _) if output.is_some() => "csv".into(),
        (None, _) => "table".into(),
    };
    match f.as_str() {
        "table" | "csv" | "json" => Ok(f),
        "parquet" if output.is_some() => Ok(f),
        "parquet" => Err(Failure::new(2, "--format parquet needs --output FILE")),
        other => Err(Failure::new(
            2,
            format!("--format {other:?} is not one of table, csv, json, parquet"),
        )),
    }
}

fn write_file(path: &Path, format: &str, answer: &Answer) -> Result<(), Failure> {
    let fail =
        |e: &dyn std::fmt::Display| Failure::new(4, format!("writing {}: {e}", path.display()));
    // Written next to the target and renamed, so a failure leaves no half file.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| fail(&e))?;
    let file = tmp.as_file().try_clone().map_err(|e| fail(&e))?;
    if format == "parquet" {
        daskrs_engine::write::write_parquet(file, answer.schema.clone(), &answer.batches)
            .map_err(|e| fail(&e))?;
    } else {
        let mut f = std::io::BufWriter::new(file);
        write(&mut f, format, answer)?;
        std::io::Write::flush(&mut f).map_err(|e| fail(&e))?;
    }
    tmp.persist(path).map_err(|e| fail(&e.error))?;
    Ok(())
}

fn write(out: &mut dyn std::io::Write, format: &str, answer: &Answer) -> Result<(), Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::new(4, format!("writing the answer: {e}"));
    let batches: &[RecordBatch] = &answer.batches;
    match format {
        "csv" => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(answer.schema.clone()))
                    .map_err(|e| fail(&e))?;
            }
            for b in batches {
                w.write(b).map_err(|e| fail(&e))?;
            }
        }
        "json" => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b).map_err(|e| fail(&e))?;
            }
            w.finish().map_err(|e| fail(&e))?;
        }
        _ => {
            let table = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(
                    answer.schema.clone(),
                )])
            } else {
                arrow::util::pretty::pretty_format_batches(batches)
            }
            .map_err(|e| fail(&e))?;
            writeln!(out, "{table}").map_err(|e| fail(&e))?;
        }
    }
    Ok(())
}
