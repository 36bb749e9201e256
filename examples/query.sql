-- TPC-H Q3 (shipping priority) on a DaskCluster, over TPC-H data in S3.
--
-- Sample data at scale factor 0.01, put in a bucket:
--
--   daskrs demo --scale 0.01 --queries 1 --data-dir tpch
--   aws s3 cp --recursive tpch s3://tpch/sf0.01/
--
-- Then, with the scheduler forwarded to this machine:
--
--   kubectl port-forward svc/demo-scheduler 8786 8787
--   daskrs sql --scheduler localhost:8786 -f examples/query.sql
--
-- The tables are made on the scheduler once; the query runs on the workers.

CREATE EXTERNAL TABLE IF NOT EXISTS customer STORED AS PARQUET LOCATION 's3://tpch/sf0.01/customer/';
CREATE EXTERNAL TABLE IF NOT EXISTS orders STORED AS PARQUET LOCATION 's3://tpch/sf0.01/orders/';
CREATE EXTERNAL TABLE IF NOT EXISTS lineitem STORED AS PARQUET LOCATION 's3://tpch/sf0.01/lineitem/';

select
    l_orderkey,
    sum(l_extendedprice * (1 - l_discount)) as revenue,
    o_orderdate,
    o_shippriority
from customer, orders, lineitem
where c_mktsegment = 'BUILDING'
    and c_custkey = o_custkey
    and l_orderkey = o_orderkey
    and o_orderdate < date '1995-03-15'
    and l_shipdate > date '1995-03-15'
group by l_orderkey, o_orderdate, o_shippriority
order by revenue desc, o_orderdate, l_orderkey
limit 10;
