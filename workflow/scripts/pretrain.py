"""Rule pretrain: self-supervised pretraining of one strategy; exports encoder weights."""

from pathlib import Path

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.training.pretrain import pretrain, resolve_strategy_config  # noqa: E402
from selma3d.training.runtime import configure_threads  # noqa: E402

p = snakemake.params
configure_threads()
config = resolve_strategy_config(snakemake.wildcards.strategy, p.model, p.strategy_config)
# a strategy block wins over pretrain.batch_size, which wins over the team default
batch_size = p.strategy_config.get("batch_size") or p.batch_size or config["batch_size"]
normalization = p.normalize
if normalization == "plan":  # each structure as finetuning normalises it (the training plan)
    from selma3d.training.plan import plan_normalization, read_plan

    normalization = plan_normalization(read_plan(snakemake.input.plan))
pretrain(snakemake.wildcards.strategy, config, list(snakemake.input.indexes), snakemake.output.weights,
         snakemake.output.curve, steps=p.steps, batch_size=batch_size, seed=p.seed,
         num_workers=p.num_workers, log_every=p.log_every, checkpoint_dir=p.checkpoint_dir,
         checkpoint_every=p.checkpoint_every, precision=p.precision, extra_meta=p.dataset_meta,
         gpus=p.gpus, normalization=p.normalize, ddp_log_dir=Path(snakemake.log[0]).with_suffix(".ranks"), **p.speed)
