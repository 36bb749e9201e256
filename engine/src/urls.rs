//! Paths and URLs in `FROM`: a directory, a file, or a glob, local or in S3.
//! DataFusion reads globs only in local paths; here `s3://bucket/prefix/*.parquet`
//! works the same way.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
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

/// A location with a glob, cut at the last '/' before its first glob
/// character: (directory, pattern). None without a glob.
fn split_glob(s: &str) -> Option<(&str, &str)> {
    let first = s.find(GLOB_CHARS)?;
    let cut = s[..first].rfind('/').map(|i| i + 1).unwrap_or(0);
    Some(s.split_at(cut))
}

/// A URL with a scheme whose path holds a glob, as a listing URL; the
/// pattern may only stand in the last part of the path.
pub fn glob_url(s: &str) -> Result<Option<ListingTableUrl>> {
    let Some((scheme, rest)) = s.split_once("://") else {
        return Ok(None);
    };
    let Some((prefix, pattern)) = split_glob(rest) else {
        return Ok(None);
    };
    if prefix.is_empty() {
        return Err(DataFusionError::Plan(format!(
            "{s}: a glob may not stand in the bucket name"
        )));
    }
    let url = url::Url::parse(&format!("{scheme}://{prefix}"))
        .map_err(|e| DataFusionError::Plan(format!("{s}: {e}")))?;
    let glob = glob::Pattern::new(pattern)
        .map_err(|e| DataFusionError::Plan(format!("{s}: bad glob: {e}")))?;
    ListingTableUrl::try_new(url, Some(glob)).map(Some)
}

/// The listing URLs a location with a glob stands for, local or with a
/// scheme. A pattern in the last part only is one URL. A pattern across
/// directories (`s3://b/logs/2024-*/part-*.parquet`, `**` for any depth) is
/// matched against a listing under the fixed part: one URL per matching
/// directory, each with the last part as its file pattern. None without a
/// glob, and for local paths DataFusion reads itself.
pub async fn glob_urls(state: &SessionState, s: &str) -> Result<Option<Vec<ListingTableUrl>>> {
    let Some((prefix, pattern)) = split_glob(s) else {
        return Ok(None);
    };
    let Some((_, files)) = pattern.rsplit_once('/') else {
        if s.contains("://") {
            return Ok(glob_url(s)?.map(|u| vec![u]));
        }
        return Ok(None);
    };
    if prefix.is_empty() || prefix.ends_with("://") {
        return Err(DataFusionError::Plan(format!(
            "{s}: a glob may not stand in the bucket name or at the start of a path"
        )));
    }
    let bad = |e: glob::PatternError| DataFusionError::Plan(format!("{s}: bad glob: {e}"));
    let whole = glob::Pattern::new(pattern).map_err(bad)?;
    let file_glob = glob::Pattern::new(files).map_err(bad)?;
    let base = ListingTableUrl::parse(prefix)?;
    let store = state.runtime_env().object_store(base.object_store())?;
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut matched = std::collections::BTreeSet::new();
    // Directories made only of `key=value` parts that hold a file the last
    // part matches, matched by the whole pattern or not.
    let mut partitions = std::collections::BTreeSet::new();
    // A file right in the fixed part that the last part matches.
    let mut top_level = false;
    let mut listing = store.list(Some(base.prefix()));
    while let Some(meta) = futures::StreamExt::next(&mut listing).await {
        let meta = meta?;
        let Some(rel) = meta
            .location
            .as_ref()
            .strip_prefix(base.prefix().as_ref())
            .map(|r| r.trim_start_matches('/'))
        else {
            continue;
        };
        let (dir, file) = rel.rsplit_once('/').unwrap_or(("", rel));
        if dir.is_empty() && file_glob.matches_with(file, options) {
            top_level = true;
        }
        if !dir.is_empty()
            && dir.split('/').all(|p| p.contains('='))
            && file_glob.matches_with(file, options)
        {
            partitions.insert(dir.to_string());
        }
        if whole.matches_with(rel, options) {
            matched.insert(dir.to_string());
        }
    }
    if matched.is_empty() {
        return Err(DataFusionError::Plan(format!("no files match {s}")));
    }
    // Hive partitions right below the fixed part, all of them matched: the
    // fixed part is the table's directory, so the partition columns come
    // from the paths. Leaving out some (`year=202[34]/...`) keeps them apart.
    if !partitions.is_empty()
        && partitions.iter().all(|p| matched.contains(p))
        && (!top_level || matched.contains(""))
    {
        matched.insert(String::new());
    }
    // A directory's listing takes in its `key=value` subdirectories (Hive
    // partitions), so those are not listed again on their own.
    let kept: Vec<&String> = matched
        .iter()
        .filter(|dir| !under_matched_partition(dir, &matched))
        .collect();
    kept.into_iter()
        .map(|dir| {
            let mut url = base.get_url().clone();
            if !dir.is_empty() {
                url.path_segments_mut()
                    .map_err(|()| DataFusionError::Plan(format!("{s}: not a hierarchical URL")))?
                    .pop_if_empty()
                    .extend(dir.split('/'))
                    .push("");
            }
            ListingTableUrl::try_new(url, Some(file_glob.clone()))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Whether `dir` lies below another matched directory through `key=value`
/// parts only.
fn under_matched_partition(dir: &str, matched: &std::collections::BTreeSet<String>) -> bool {
    let parts: Vec<&str> = if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').collect()
    };
    (0..parts.len()).any(|keep| {
        parts[keep..].iter().all(|p| p.contains('=')) && matched.contains(&parts[..keep].join("/"))
    })
}

/// Whether a location holds a glob character.
pub fn is_glob(s: &str) -> bool {
    s.contains(GLOB_CHARS)
}

/// A table over the files at `urls`, format and schema inferred.
pub async fn listing_table(
    state: &SessionState,
    urls: Vec<ListingTableUrl>,
) -> Result<Arc<dyn TableProvider>> {
    let shown = urls.first().map(|u| u.to_string()).unwrap_or_default();
    let cfg = match ListingTableConfig::new_with_multi_paths(urls)
        .infer_options(state)
        .await
    {
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

/// `CREATE EXTERNAL TABLE ... LOCATION` with a glob: the statement's format,
/// options and schema over the files the glob stands for.
pub async fn external_table(
    state: &SessionState,
    c: &datafusion::logical_expr::CreateExternalTable,
    urls: Vec<ListingTableUrl>,
) -> Result<Arc<dyn TableProvider>> {
    use datafusion::datasource::listing::ListingOptions;
    let format = state
        .get_file_format_factory(&c.file_type)
        .ok_or_else(|| DataFusionError::Plan(format!("unknown file format {}", c.file_type)))?
        .create(state, &c.options)?;
    if !c.order_exprs.is_empty() {
        return Err(DataFusionError::Plan(format!(
            "{}: WITH ORDER is not supported with a glob location",
            c.name
        )));
    }
    let options = ListingOptions::new(format).with_file_extension("");
    let cfg = ListingTableConfig::new_with_multi_paths(urls);
    let cfg = if c.schema.fields().is_empty() {
        let partitions = c
            .table_partition_cols
            .iter()
            .map(|p| {
                let t = DataType::Dictionary(Box::new(DataType::UInt16), Box::new(DataType::Utf8));
                (p.clone(), t)
            })
            .collect::<Vec<_>>();
        let cfg = cfg.with_listing_options(options.with_table_partition_cols(partitions));
        if c.table_partition_cols.is_empty() {
            cfg.infer_partitions_from_path(state).await?
        } else {
            cfg
        }
        .infer_schema(state)
        .await?
    } else {
        // Partition columns take their types from the given schema and are
        // not read from the files.
        let schema = c.schema.inner();
        let mut partitions = Vec::new();
        for p in &c.table_partition_cols {
            let f = schema.field_with_name(p)?;
            partitions.push((f.name().clone(), f.data_type().clone()));
        }
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .filter(|f| !c.table_partition_cols.contains(f.name()))
            .cloned()
            .collect();
        cfg.with_listing_options(options.with_table_partition_cols(partitions))
            .with_schema(Arc::new(arrow::datatypes::Schema::new(fields)))
    };
    Ok(Arc::new(ListingTable::try_new(cfg)?))
}

#[async_trait]
impl UrlTableFactory for UrlTables {
    async fn try_new(&self, s: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(state) = self.state.get().and_then(|f| f()) else {
            return Err(DataFusionError::Internal("no session to plan in".into()));
        };
        if let Some(urls) = glob_urls(&state, s).await? {
            return listing_table(&state, urls).await.map(Some);
        }
        let Ok(url) = ListingTableUrl::parse(s) else {
            return Ok(None);
        };
        match listing_table(&state, vec![url]).await {
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
    fn partition_directories_below_a_matched_one_are_not_listed_again() {
        let matched: std::collections::BTreeSet<String> =
            ["", "a", "a/k=1", "a/k=1/j=2", "b/k=1", "c/d"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let under = |d: &str| under_matched_partition(d, &matched);
        assert!(!under(""));
        assert!(!under("a"), "a plain directory is its own");
        assert!(under("a/k=1"));
        assert!(under("a/k=1/j=2"));
        assert!(!under("b/k=1"), "b is not matched: {matched:?}");
        assert!(!under("c/d"));
        let top: std::collections::BTreeSet<String> =
            ["", "k=1"].iter().map(|s| s.to_string()).collect();
        assert!(under_matched_partition("k=1", &top));
    }

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
