"""Models: plain `nn.Module`s taking feature specs. Rankers in `rank`, recallers in `recall`."""
