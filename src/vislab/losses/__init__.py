"""Losses written in the project: triplet margin loss with online mining."""

from vislab.losses.dice_ce import DiceCELoss, dice_ce_loss, soft_dice_loss
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

__all__ = ["batch_triplet_loss", "dice_ce_loss", "DiceCELoss", "mine_all", "mine_batch_hard", "mine_semi_hard",
           "MINING_STRATEGIES", "pairwise_distances", "REDUCTIONS", "soft_dice_loss", "triplet_margin_loss",
           "TripletLoss"]
