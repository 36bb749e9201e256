//! Tables a query names that are results a session holds (a Python task's
//! `pyarrow.Table`, an earlier query's answer): each is read by the stage
//! that scans it as one more input, the key's Arrow IPC stream, fetched by
//! the worker like any upstream stage output.
//!
//! Such a table is seen by the one request that names it: the planner puts
//! it in front of the cluster's catalog for that request only, without
//! changing the catalog other requests see.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, SchemaProvider, Session, TableProvider,
};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::Error;
use crate::reader::{Layout, StageReaderExec};

/// Stage numbers from here on stand for input tables (table `i` is
/// `FIRST_TABLE_STAGE + i`), never for stages of the query.
pub const FIRST_TABLE_STAGE: u32 = 1 << 30;

/// A table the query may name, held under `key` in the client's session.
#[derive(Debug, Clone)]
pub struct InputTable {
    pub name: String,
    pub key: String,
    pub schema: SchemaRef,
}

impl InputTable {
    /// `schema` is an Arrow IPC stream (its batches, if any, are not read).
    pub fn from_ipc(name: &str, key: &str, schema: &[u8]) -> Result<InputTable, Error> {
        if name.is_empty() {
            return Err(Error::BadSql("an input table needs a name".into()));
        }
        let reader = crate::ipc::reader(schema).map_err(|e| {
            Error::BadSql(format!("the schema of table '{name}' is unreadable: {e}"))
        })?;
        Ok(InputTable {
            name: name.to_string(),
            key: key.to_string(),
            schema: reader.schema(),
        })
    }
}

/// The stage number that stands for input table `index`, if `stage` is one.
pub fn table_index(stage: u32) -> Option<usize> {
    stage.checked_sub(FIRST_TABLE_STAGE).map(|i| i as usize)
}

/// Scans one input table: a one-partition reader of its key's stream.
#[derive(Debug)]
struct KeyTable {
    stage: u32,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for KeyTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _: &dyn Session,
        projection: Option<&Vec<usize>>,
        _: &[Expr],
        _: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let reader: Arc<dyn ExecutionPlan> = Arc::new(StageReaderExec::new(
            self.stage,
            Layout::Direct,
            self.schema.clone(),
            1,
            Default::default(),
        ));
        let Some(columns) = projection else {
            return Ok(reader);
        };
        let exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = columns
            .iter()
            .map(|&i| {
                let name = self.schema.field(i).name().clone();
                let col: Arc<dyn datafusion::physical_expr::PhysicalExpr> =
                    Arc::new(Column::new(&name, i));
                (col, name)
            })
            .collect();
        Ok(Arc::new(ProjectionExec::try_new(exprs, reader)?))
    }
}

/// The cluster's catalogs with the input tables in front of the default
/// schema of the default catalog.
pub fn overlay(
    base: Arc<dyn CatalogProviderList>,
    catalog: &str,
    schema: &str,
    tables: &[InputTable],
) -> Arc<dyn CatalogProviderList> {
    let tables = tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let provider: Arc<dyn TableProvider> = Arc::new(KeyTable {
                stage: FIRST_TABLE_STAGE + i as u32,
                schema: t.schema.clone(),
            });
            (t.name.clone(), provider)
        })
        .collect();
    Arc::new(Catalogs {
        base,
        catalog: catalog.to_string(),
        schema: schema.to_string(),
        tables: Arc::new(tables),
    })
}

type Tables = Arc<HashMap<String, Arc<dyn TableProvider>>>;

struct Catalogs {
    base: Arc<dyn CatalogProviderList>,
    catalog: String,
    schema: String,
    tables: Tables,
}

impl fmt::Debug for Catalogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalogs")
            .field("input_tables", &self.tables.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CatalogProviderList for Catalogs {
    fn register_catalog(
        &self,
        name: String,
        catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        self.base.register_catalog(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        self.base.catalog_names()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let base = self.base.catalog(name)?;
        if name != self.catalog {
            return Some(base);
        }
        Some(Arc::new(Catalog {
            base,
            schema: self.schema.clone(),
            tables: self.tables.clone(),
        }))
    }
}

#[derive(Debug)]
struct Catalog {
    base: Arc<dyn CatalogProvider>,
    schema: String,
    tables: Tables,
}

impl CatalogProvider for Catalog {
    fn schema_names(&self) -> Vec<String> {
        self.base.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        let base = self.base.schema(name)?;
        if name != self.schema {
            return Some(base);
        }
        Some(Arc::new(Schema {
            base,
            tables: self.tables.clone(),
        }))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        self.base.register_schema(name, schema)
    }

    fn deregister_schema(
        &self,
        name: &str,
        cascade: bool,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        self.base.deregister_schema(name, cascade)
    }
}

#[derive(Debug)]
struct Schema {
    base: Arc<dyn SchemaProvider>,
    tables: Tables,
}

impl Schema {
    /// The input table `name` names. SQL folds unquoted names to lower
    /// case, so `FROM Sales` also finds a table given as `Sales`, when no
    /// other table folds to the same name.
    fn input(&self, name: &str) -> Option<&Arc<dyn TableProvider>> {
        if let Some(t) = self.tables.get(name) {
            return Some(t);
        }
        let mut folded = self.tables.iter().filter(|(n, _)| n.to_lowercase() == name);
        match (folded.next(), folded.next()) {
            (Some((_, t)), None) => Some(t),
            _ => None,
        }
    }
}

#[async_trait]
impl SchemaProvider for Schema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.base.table_names();
        names.extend(self.tables.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        match self.input(name) {
            Some(t) => Ok(Some(t.clone())),
            None => self.base.table(name).await,
        }
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        self.base.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.base.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.input(name).is_some() || self.base.table_exist(name)
    }
}
