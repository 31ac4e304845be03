"""Per-GPU autotuning with MetaSchedule: tasks from the registry, XGBoost + evolutionary search, records
with provenance under tuning_logs/<gpu-key>/<op-spec-key>/, and their lookup at dispatch."""
