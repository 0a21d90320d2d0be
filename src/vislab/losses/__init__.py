"""Losses written in the project: triplet margin loss with online mining."""

from vislab.losses.triplet import (
    MINING_STRATEGIES,
    REDUCTIONS,
    TripletLoss,
    batch_triplet_loss,
    mine_all,
    mine_batch_hard,
    mine_semi_hard,
    pairwise_distances,
    triplet_margin_loss,
)

__all__ = ["MINING_STRATEGIES", "REDUCTIONS", "TripletLoss", "batch_triplet_loss", "mine_all", "mine_batch_hard",
           "mine_semi_hard", "pairwise_distances", "triplet_margin_loss"]
