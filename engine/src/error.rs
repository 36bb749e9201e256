//! Errors as a user reads them, and of which kind they are: the worker and
//! the scheduler act on the kind (a lost peer means computing an input
//! again, bad SQL is the client's to fix), never on the text.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// What went wrong, by what can be done about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The statement is wrong: syntax, names, types, or what is not supported.
    #[error("{0}")]
    BadSql(String),
    /// S3 (or the file system behind a local path) refused or failed a request.
    #[error("{0}")]
    Storage(String),
    /// Bytes that do not decode: Parquet, an Arrow IPC stream, a plan, pieces.
    #[error("{0}")]
    Corrupt(String),
    /// The worker that held an input went away or stopped answering.
    #[error("{0}")]
    PeerGone(String),
    /// The computation itself failed: a division by zero, a task's own error,
    /// memory exhausted.
    #[error("{0}")]
    Failed(String),
    /// User code raised: its error as text (type, message, the remote
    /// traceback) and the exception as its language serialized it (pickled,
    /// for Python; empty when it could not be), to raise again in the client.
    #[error("{message}")]
    Raised {
        message: String,
        exception: bytes::Bytes,
    },
}

impl Error {
    /// The error DataFusion raised, by kind, said as [`describe`] says it.
    pub fn from_datafusion(e: &DataFusionError) -> Error {
        let message = describe(e);
        match kind_of(e) {
            Kind::BadSql => Error::BadSql(message),
            Kind::Storage => Error::Storage(message),
            Kind::Corrupt => Error::Corrupt(message),
            Kind::Failed => Error::Failed(message),
        }
    }

    /// The same kind of error, its message prefixed with where it happened.
    pub fn context(self, what: impl std::fmt::Display) -> Error {
        let with = |m: String| format!("{what}: {m}");
        match self {
            Error::BadSql(m) => Error::BadSql(with(m)),
            Error::Storage(m) => Error::Storage(with(m)),
            Error::Corrupt(m) => Error::Corrupt(with(m)),
            Error::PeerGone(m) => Error::PeerGone(with(m)),
            Error::Failed(m) => Error::Failed(with(m)),
            Error::Raised { message, exception } => Error::Raised {
                message: with(message),
                exception,
            },
        }
    }
}

impl Error {
    /// The serialized exception of an error user code raised; empty for the
    /// others.
    pub fn exception(&self) -> bytes::Bytes {
        match self {
            Error::Raised { exception, .. } => exception.clone(),
            _ => bytes::Bytes::new(),
        }
    }
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Error {
        Error::from_datafusion(&e)
    }
}

enum Kind {
    BadSql,
    Storage,
    Corrupt,
    Failed,
}

fn kind_of(e: &DataFusionError) -> Kind {
    match e {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            kind_of(inner)
        }
        DataFusionError::Shared(inner) => kind_of(inner),
        DataFusionError::Collection(all) => all.first().map_or(Kind::Failed, kind_of),
        DataFusionError::External(inner) => {
            if let Some(d) = inner.downcast_ref::<DataFusionError>() {
                kind_of(d)
            } else if let Some(o) = inner.downcast_ref::<object_store::Error>() {
                object_store_kind(o)
            } else if inner.downcast_ref::<crate::footer::NotParquet>().is_some() {
                Kind::Corrupt
            } else {
                Kind::Failed
            }
        }
        DataFusionError::ObjectStore(o) => object_store_kind(o),
        DataFusionError::IoError(_) => Kind::Storage,
        DataFusionError::ParquetError(_) => Kind::Corrupt,
        DataFusionError::ArrowError(inner, _) => match inner.as_ref() {
            ArrowError::IpcError(_)
            | ArrowError::ParseError(_)
            | ArrowError::ParquetError(_)
            | ArrowError::CsvError(_)
            | ArrowError::JsonError(_)
            | ArrowError::InvalidArgumentError(_) => Kind::Corrupt,
            ArrowError::IoError(..) => Kind::Storage,
            ArrowError::ExternalError(inner) => match inner.downcast_ref::<object_store::Error>() {
                Some(o) => object_store_kind(o),
                None => Kind::Failed,
            },
            _ => Kind::Failed,
        },
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Configuration(_)
        | DataFusionError::NotImplemented(_) => Kind::BadSql,
        _ => Kind::Failed,
    }
}

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

/// A store's error: a file that is not what its name says is corrupt data,
/// anything else the store's refusal or failure.
fn object_store_kind(e: &object_store::Error) -> Kind {
    match e {
        object_store::Error::Generic { source, .. }
            if source.downcast_ref::<crate::footer::NotParquet>().is_some() =>
        {
            Kind::Corrupt
        }
        _ => Kind::Storage,
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

pub use daskrs_core::error_chain as chain;

#[cfg(test)]
mod tests {
    use datafusion::arrow::error::ArrowError;
    use datafusion::error::DataFusionError;

    use super::Error;

    fn kind(e: DataFusionError) -> Error {
        Error::from_datafusion(&e)
    }

    #[test]
    fn errors_are_told_apart_by_kind_whatever_wraps_them() {
        let parse = datafusion::sql::parser::DFParser::parse_sql("SELEC 1").unwrap_err();
        assert!(matches!(kind(parse), Error::BadSql(_)));
        assert!(matches!(
            kind(DataFusionError::Plan("no table t".into())),
            Error::BadSql(_)
        ));
        // How the planner reports a table it cannot find.
        let diagnosed = DataFusionError::Diagnostic(
            Box::new(datafusion::common::Diagnostic::new_error("here", None)),
            Box::new(DataFusionError::Plan("table 't' not found".into())),
        );
        assert!(matches!(kind(diagnosed), Error::BadSql(_)));
        let missing = object_store::Error::NotFound {
            path: "s3://b/k.parquet".into(),
            source: "404".into(),
        };
        let e = kind(DataFusionError::ObjectStore(Box::new(missing)));
        assert_eq!(e, Error::Storage("not found: s3://b/k.parquet".into()));
        let not_parquet = object_store::Error::Generic {
            store: "Parquet",
            source: Box::new(crate::footer::NotParquet {
                location: "b/k.parquet".into(),
                why: "no magic".into(),
            }),
        };
        // Wrapped the way a scan reports it: context around an external error.
        let wrapped = DataFusionError::Context(
            "reading b".into(),
            Box::new(DataFusionError::External(Box::new(not_parquet))),
        );
        let e = kind(wrapped);
        assert!(
            matches!(&e, Error::Corrupt(m) if m.contains("not a valid Parquet file")),
            "{e:?}"
        );
        assert!(matches!(
            kind(DataFusionError::ArrowError(
                Box::new(ArrowError::IpcError("bad".into())),
                None
            )),
            Error::Corrupt(_)
        ));
        assert!(matches!(
            kind(DataFusionError::ArrowError(
                Box::new(ArrowError::DivideByZero),
                None
            )),
            Error::Failed(_)
        ));
        let e = Error::PeerGone("10.0.0.1:8788: connection refused".into()).context("input 3");
        assert_eq!(
            e,
            Error::PeerGone("input 3: 10.0.0.1:8788: connection refused".into())
        );
    }
}
