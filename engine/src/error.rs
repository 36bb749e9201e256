//! Errors as a user reads them.

use datafusion::error::DataFusionError;

/// A DataFusion error without the wrapping layers that add nothing.
pub fn describe(e: &DataFusionError) -> String {
    match e {
        DataFusionError::Context(ctx, inner) => format!("{ctx}: {}", describe(inner)),
        DataFusionError::Shared(inner) => describe(inner),
        DataFusionError::External(inner) => external(inner.as_ref()),
        DataFusionError::ObjectStore(inner) => object_store(inner),
        DataFusionError::ArrowError(inner, _) => format!("Arrow: {inner}"),
        DataFusionError::ParquetError(inner) => format!("Parquet: {inner}"),
        DataFusionError::SQL(inner, _) => format!("SQL syntax: {inner}"),
        DataFusionError::Plan(m) => format!("planning: {m}"),
        DataFusionError::SchemaError(inner, _) => format!("schema: {inner}"),
        DataFusionError::Execution(m) => m.clone(),
        DataFusionError::NotImplemented(m) => format!("not supported: {m}"),
        DataFusionError::ResourcesExhausted(m) => format!("out of memory: {m}"),
        other => other.to_string(),
    }
}

fn external(e: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    if let Some(d) = e.downcast_ref::<DataFusionError>() {
        return describe(d);
    }
    if let Some(o) = e.downcast_ref::<object_store::Error>() {
        return object_store(o);
    }
    chain(e)
}

fn object_store(e: &object_store::Error) -> String {
    match e {
        object_store::Error::NotFound { path, .. } => format!("not found: {path}"),
        other => chain(other),
    }
}

/// An error and its sources, each said once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let m = inner.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        source = inner.source();
    }
    s
}
