//! Random combinations of the operators whose plans stage cutting has to
//! keep intact (unions, windows, grouping sets, joins of every type, scalar
//! and correlated subqueries, INTERSECT and EXCEPT, DISTINCT, LIMIT under a
//! sort) over small tables, planned into stages, run task by task as
//! workers would, and compared with single-node DataFusion.

mod support;

use daskrs_engine::compare;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// A relation of two BIGINT columns `k` and `v`, as SQL.
#[derive(Debug, Clone)]
enum Rel {
    Table(usize),
    Filter(Box<Rel>, u8),
    Fixed(Box<Rel>, u8),
    AggregatedUnion(Box<Rel>, Box<Rel>),
    Aggregate(Box<Rel>),
    Distinct(Box<Rel>),
    UnionAll(Box<Rel>, Box<Rel>),
    Union(Box<Rel>, Box<Rel>),
    Intersect(Box<Rel>, Box<Rel>),
    Except(Box<Rel>, Box<Rel>),
    Join(Box<Rel>, Box<Rel>, usize),
    Window(Box<Rel>, usize),
    Rollup(Box<Rel>),
    AboveAverage(Box<Rel>, Box<Rel>),
    Correlated(Box<Rel>, Box<Rel>),
    TopN(Box<Rel>, u8),
}

/// Each table as `k` and `v`: keys over a few hundred values, so that
/// joins and groups meet.
const TABLES: [&str; 4] = [
    "select o_custkey % 200 as k, cast(o_totalprice as bigint) as v from orders",
    "select l_suppkey as k, cast(l_quantity as bigint) as v from lineitem",
    "select c_custkey % 200 as k, cast(c_acctbal as bigint) as v from customer",
    "select s_suppkey as k, s_nationkey as v from supplier",
];

const JOINS: [&str; 6] = [
    "join",
    "left join",
    "right join",
    "full join",
    "semi",
    "anti",
];

const WINDOWS: [&str; 5] = [
    "v + rank() over (partition by k % 7 order by v, k)",
    "sum(k) over (partition by k % 3, v)",
    "sum(v) over (partition by k)",
    "v - coalesce(lag(v) over (partition by k % 5 order by k, v), 0)",
    "count(*) over (partition by v % 3)",
];

impl Rel {
    fn sql(&self) -> String {
        match self {
            Rel::Table(t) => TABLES[*t].to_string(),
            Rel::Filter(r, m) => format!("select k, v from ({}) where v % {} <> 0", r.sql(), m),
            // v one value from here on, which the plan above may rely on.
            Rel::Fixed(r, c) => format!("select k, v from ({}) where v = {}", r.sql(), c),
            // Unions of inputs partitioned alike, which DataFusion
            // interleaves rather than appends.
            Rel::AggregatedUnion(a, b) => format!(
                "select k, sum(v) as v from (select k, sum(v) as v from ({}) group by k \
                 union all select k, sum(v) as v from ({}) group by k) group by k",
                a.sql(),
                b.sql()
            ),
            Rel::Aggregate(r) => format!("select k, sum(v) as v from ({}) group by k", r.sql()),
            Rel::Distinct(r) => format!("select distinct k, v % 100 as v from ({})", r.sql()),
            Rel::UnionAll(a, b) => format!("{} union all {}", inner(a), inner(b)),
            Rel::Union(a, b) => format!("{} union {}", inner(a), inner(b)),
            Rel::Intersect(a, b) => format!("{} intersect {}", inner(a), inner(b)),
            Rel::Except(a, b) => format!("{} except {}", inner(a), inner(b)),
            Rel::Join(a, b, how) => {
                // Both sides grouped by k: one row per key a side.
                let side = |r: &Rel| format!("select k, sum(v) as v from ({}) group by k", r.sql());
                match JOINS[*how] {
                    "semi" => format!(
                        "select k, v from ({}) a where k in (select k from ({}))",
                        side(a),
                        side(b)
                    ),
                    "anti" => format!(
                        "select k, v from ({}) a where not exists (select 1 from ({}) b where b.k = a.k)",
                        side(a),
                        side(b)
                    ),
                    join => format!(
                        "select coalesce(a.k, b.k) as k, coalesce(a.v, 0) + coalesce(b.v, 0) as v \
                         from ({}) a {join} ({}) b on a.k = b.k",
                        side(a),
                        side(b)
                    ),
                }
            }
            Rel::Window(r, w) => format!("select k, {} as v from ({})", WINDOWS[*w], r.sql()),
            Rel::Rollup(r) => format!(
                "select coalesce(k, -1) as k, sum(v) as v from ({}) group by rollup(k)",
                r.sql()
            ),
            Rel::AboveAverage(a, b) => format!(
                "select k, v from ({}) where v >= (select avg(v) from ({}))",
                a.sql(),
                b.sql()
            ),
            Rel::Correlated(a, b) => format!(
                "select k, v from ({}) a where v >= (select min(v) from ({}) b where b.k = a.k)",
                a.sql(),
                b.sql()
            ),
            // Ties are whole equal rows, so which of them make the cut
            // does not change the answer.
            Rel::TopN(r, n) => format!("select k, v from ({}) order by k, v limit {}", r.sql(), n),
        }
    }
}

/// A relation as one side of a set operation.
fn inner(r: &Rel) -> String {
    format!("select k, v from ({})", r.sql())
}

fn rel() -> impl Strategy<Value = Rel> {
    let leaf = (0..TABLES.len()).prop_map(Rel::Table);
    leaf.prop_recursive(3, 12, 2, |r| {
        let b = || r.clone().prop_map(Box::new);
        prop_oneof![
            (b(), 2u8..5).prop_map(|(r, m)| Rel::Filter(r, m)),
            (b(), 0u8..6).prop_map(|(r, c)| Rel::Fixed(r, c)),
            (b(), b()).prop_map(|(a, c)| Rel::AggregatedUnion(a, c)),
            b().prop_map(Rel::Aggregate),
            b().prop_map(Rel::Distinct),
            (b(), b()).prop_map(|(a, c)| Rel::UnionAll(a, c)),
            (b(), b()).prop_map(|(a, c)| Rel::Union(a, c)),
            (b(), b()).prop_map(|(a, c)| Rel::Intersect(a, c)),
            (b(), b()).prop_map(|(a, c)| Rel::Except(a, c)),
            (b(), b(), 0..JOINS.len()).prop_map(|(a, c, j)| Rel::Join(a, c, j)),
            (b(), 0..WINDOWS.len()).prop_map(|(r, w)| Rel::Window(r, w)),
            b().prop_map(Rel::Rollup),
            (b(), b()).prop_map(|(a, c)| Rel::AboveAverage(a, c)),
            (b(), b()).prop_map(|(a, c)| Rel::Correlated(a, c)),
            (b(), 1u8..60).prop_map(|(r, n)| Rel::TopN(r, n)),
        ]
    })
}

#[test]
fn random_plans_answer_as_single_node() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_dir, planner, reference) = runtime.block_on(support::small_tpch());
    let cases = std::env::var("DASKRS_RANDOM_PLANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&(rel(), 1usize..5), |(r, threads)| {
        let sql = format!("select k, v from ({})", r.sql());
        runtime.block_on(async {
            let want = compare::run_sql(&reference, &sql)
                .await
                .map_err(|e| TestCaseError::fail(format!("single node: {e}\n{sql}")))?;
            let got = support::try_run_in_process(&planner, &sql, threads)
                .await
                .map_err(|e| TestCaseError::fail(format!("{e}\n{sql}")))?;
            prop_assert_eq!(
                compare::sorted_rows(&got).unwrap(),
                compare::sorted_rows(&want).unwrap(),
                "{} with {} threads",
                sql,
                threads
            );
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
