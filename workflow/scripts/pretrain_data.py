"""Rule pretrain_data: the nested, seeded subset of the patch index one pretraining data variant reads."""

from selma3d.core.logs import start_rule

start_rule(snakemake)

from selma3d.preprocess.subsets import write_pretrain_subset  # noqa: E402

s = snakemake.params.subset
write_pretrain_subset(list(snakemake.input.indexes), snakemake.output.index, s["fraction"], s["seed"],
                      keep=s["keep"], source=s["source"])
