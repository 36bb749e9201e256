//! Paths and URLs in `FROM`: a directory, a file, or a glob, local or in S3.
//! DataFusion reads globs only in local paths; here `s3://bucket/prefix/*.parquet`
//! works the same way.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::catalog::{TableProvider, UrlTableFactory};
use datafusion::datasource::listing::{
    ListingTable, ListingTableConfig, ListingTableConfigExt, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::SessionState;

type StateFn = Box<dyn Fn() -> Option<SessionState> + Send + Sync>;

/// Makes tables from the strings in `FROM`.
#[derive(Default)]
pub struct UrlTables {
    state: OnceLock<StateFn>,
}

impl std::fmt::Debug for UrlTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlTables")
    }
}

impl UrlTables {
    /// Gives the factory the session it plans in, once that exists.
    pub fn set_state(&self, f: StateFn) {
        let _ = self.state.set(f);
    }
}

const GLOB_CHARS: [char; 3] = ['*', '?', '['];

/// A URL with a scheme whose path holds a glob, as a listing URL.
pub fn glob_url(s: &str) -> Result<Option<ListingTableUrl>> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok(None);
    };
    let Some(first) = rest.find(GLOB_CHARS) else {
        return Ok(None);
    };
    let cut = rest[..first].rfind('/').map(|i| i + 1).unwrap_or(0);
    if cut == 0 {
        return Err(DataFusionError::Plan(format!(
            "{s}: a glob may not stand in the bucket name"
        )));
    }
    let (prefix, pattern) = rest.split_at(cut);
    let url = url::Url::parse(&format!("{scheme}://{prefix}"))
        .map_err(|e| DataFusionError::Plan(format!("{s}: {e}")))?;
    let glob = glob::Pattern::new(pattern)
        .map_err(|e| DataFusionError::Plan(format!("{s}: bad glob: {e}")))?;
    ListingTableUrl::try_new(url, Some(glob)).map(Some)
}

/// A table over the files at `url`, format and schema inferred.
pub async fn listing_table(
    state: &SessionState,
    url: ListingTableUrl,
) -> Result<Arc<dyn TableProvider>> {
    let shown = url.to_string();
    let cfg = match ListingTableConfig::new(url).infer_options(state).await {
        Ok(c) => c,
        Err(e) if e.to_string().contains("No files") => {
            return Err(DataFusionError::Plan(format!("no files at {shown}")));
        }
        Err(e) => return Err(e),
    };
    let cfg = cfg
        .infer_partitions_from_path(state)
        .await?
        .infer_schema(state)
        .await?;
    Ok(Arc::new(ListingTable::try_new(cfg)?))
}

#[async_trait]
impl UrlTableFactory for UrlTables {
    async fn try_new(&self, s: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(state) = self.state.get().and_then(|f| f()) else {
            return Err(DataFusionError::Internal("no session to plan in".into()));
        };
        if let Some(url) = glob_url(s)? {
            return listing_table(&state, url).await.map(Some);
        }
        let Ok(url) = ListingTableUrl::parse(s) else {
            return Ok(None);
        };
        match listing_table(&state, url).await {
            Ok(t) => Ok(Some(t)),
            // A URL or a path was meant: say what went wrong with it.
            Err(e) if s.contains('/') => Err(e),
            // A plain name that is no path: an unknown table, as usual.
            Err(_) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::path::Path;

    #[test]
    fn s3_globs_split_into_prefix_and_pattern() {
        let u = glob_url("s3://data/nation/*.parquet").unwrap().unwrap();
        assert_eq!(u.as_str(), "s3://data/nation/");
        assert!(
            u.contains(&Path::from("nation/part-001.parquet"), true),
            "{u:?}"
        );
        assert!(!u.contains(&Path::from("nation/part-001.csv"), true));
        assert!(!u.contains(&Path::from("region/part-001.parquet"), true));
        assert!(glob_url("s3://data/nation/").unwrap().is_none());
        assert!(glob_url("/local/*.parquet").unwrap().is_none());
        assert!(glob_url("s3://da*/x").is_err());
    }
}
