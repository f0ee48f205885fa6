/**
 * The parts of prom-client Portcullis uses. Its index also loads the push gateway client (http,
 * https, zlib), the default process metrics (perf_hooks, v8) and the cluster aggregator (cluster,
 * child_process): ~25 ms of every start and several MB, for code a single proxy never runs.
 */
import type { Counter as CounterType, Gauge as GaugeType, Histogram as HistogramType } from 'prom-client';
import CounterClass from 'prom-client/lib/counter.js';
import GaugeClass from 'prom-client/lib/gauge.js';
import HistogramClass from 'prom-client/lib/histogram.js';
import RegistryClass from 'prom-client/lib/registry.js';

export const Counter = CounterClass;
export type Counter<T extends string = string> = CounterType<T>;
export const Gauge = GaugeClass;
export type Gauge<T extends string = string> = GaugeType<T>;
export const Histogram = HistogramClass;
export type Histogram<T extends string = string> = HistogramType<T>;
export const Registry = RegistryClass;
export type Registry = InstanceType<typeof RegistryClass>;
