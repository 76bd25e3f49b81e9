"""Runtime, checkpoints, sampling, losses, the run plan, and the pretrain / finetune loops."""
