//! The commands that talk to a running scheduler.

use std::io::{IsTerminal, Read};
use std::time::Instant;

use daskrs_client::{Graph, output};
use indicatif::{ProgressBar, ProgressStyle};

use super::{CancelArgs, Failure, RetireArgs, SubmitArgs, Target};

pub fn progress_bar(enabled: bool) -> Option<ProgressBar> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} tasks {msg}",
        )
        .expect("static template is valid"),
    );
    Some(bar)
}

/// Shows a graph's progress on the bar, if there is one.
pub fn show_progress(bar: &Option<ProgressBar>, p: daskrs_client::Progress, what: &str) {
    if let Some(b) = bar {
        b.set_length(p.total);
        b.set_position(p.done);
        b.set_message(format!("{what}({} running)", p.processing));
    }
}

pub async fn submit(a: SubmitArgs) -> Result<(), Failure> {
    let text = if a.graph.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(|e| {
            Failure::new(2, format!("cannot read the graph from standard input: {e}"))
        })?;
        buf
    } else {
        std::fs::read(&a.graph)
            .map_err(|e| Failure::new(2, format!("cannot read {}: {e}", a.graph.display())))?
    };
    let doc = daskrs_core::json::parse_graph(&text)
        .map_err(|e| Failure::new(2, format!("{}: {e}", a.graph.display())))?;
    // Structure is checked here too, so a bad graph fails before any connection.
    daskrs_core::validate(doc.tasks.clone(), &doc.outputs, |_| true, String::new)
        .map_err(|e| Failure::new(2, format!("{}: {e}", a.graph.display())))?;
    let client = a.target.connect().await?;
    let bar = progress_bar(!a.no_progress);
    let started = Instant::now();
    let graph = Graph {
        name: a.graph.display().to_string(),
        tasks: doc.tasks,
        outputs: doc.outputs,
    };
    let finished = client.run(graph, |p| show_progress(&bar, p, "")).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let finished = finished?;
    let mut outputs = Vec::new();
    for o in &finished.outputs {
        outputs.push(client.gather(&finished, &o.key).await?);
    }
    if a.format == "json" {
        println!("{}", output::json(&outputs));
    } else {
        for o in &outputs {
            println!("{}", output::text(o));
        }
        eprintln!("done in {:.3}s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

pub async fn info(t: Target) -> Result<(), Failure> {
    let client = t.connect().await?;
    let info = client.info().await?;
    println!(
        "scheduler {} (version {})",
        client.address(),
        info.scheduler_version
    );
    println!(
        "{:<20} {:<22} {:>7} {:>10} {:>12} {:>12} {:>10} {:>9}",
        "WORKER", "ADDRESS", "THREADS", "STATUS", "MEMORY", "SPILLED", "RUNNING", "EXECUTED"
    );
    for w in &info.workers {
        println!(
            "{:<20} {:<22} {:>7} {:>10} {:>12} {:>12} {:>10} {:>9}",
            w.name,
            w.address,
            w.nthreads,
            w.status,
            daskrs_core::ByteSize(w.memory_bytes).to_string(),
            daskrs_core::ByteSize(w.spilled_bytes).to_string(),
            w.processing,
            w.executed
        );
    }
    let tasks: Vec<String> = info
        .tasks
        .iter()
        .map(|s| format!("{} {}", s.count, s.state))
        .collect();
    println!("graphs: {}; tasks: {}", info.graphs, tasks.join(", "));
    for k in &info.no_worker {
        println!(
            "waiting: {} tasks of kind {:?}: no worker runs them (start workers with --python for Python tasks)",
            k.tasks, k.kind
        );
    }
    Ok(())
}

pub async fn retire(a: RetireArgs) -> Result<(), Failure> {
    if a.workers.is_empty() && a.count == 0 {
        return Err(Failure::new(2, "name --workers to retire, or a --count"));
    }
    let client = a.target.connect().await?;
    let retired = client.retire(a.workers, a.count, a.timeout).await?;
    for r in &retired {
        println!("retired {r}");
    }
    Ok(())
}

pub async fn cancel(a: CancelArgs) -> Result<(), Failure> {
    let client = a.target.connect().await?;
    if client.cancel(a.graph_id).await? {
        println!("cancelled graph {}", a.graph_id);
        Ok(())
    } else {
        Err(Failure::new(4, format!("no running graph {}", a.graph_id)))
    }
}
