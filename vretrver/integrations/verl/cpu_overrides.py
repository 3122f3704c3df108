"""verl overrides for training in one process on a CPU (``run_rl.sh DEVICE=cpu``): one worker of each kind,
a small vLLM batch, one storage unit. Plain strings, no verl import: the nano run's RL settings and the
CPU training tests start from this list and add their own batch sizes, lengths and learning rate."""

CPU_PROCESS_OVERRIDES = [
    "data.dataloader_num_workers=0",
    "data.filter_overlong_prompts_workers=1",
    "actor_rollout_ref.rollout.agent.num_workers=1",
    "reward.num_workers=1",
    "actor_rollout_ref.rollout.max_num_seqs=8",
    "actor_rollout_ref.rollout.max_num_batched_tokens=8192",
    "actor_rollout_ref.rollout.checkpoint_engine.update_weights_bucket_megabytes=128",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
]
