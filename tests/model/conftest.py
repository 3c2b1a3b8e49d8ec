import numpy as np
import pytest
import torch

from twotower.model.schema import DatasetSchema, Feature


@pytest.fixture
def toy_schema() -> DatasetSchema:
    return DatasetSchema(
        num_users=11, num_items=21, history_length=5,
        user_features=(Feature("gender", "categorical", 3),),
        item_features=(Feature("genres", "multi_hot", 5, max_length=3), Feature("year", "categorical", 4)),
        context_features=(Feature("hour_sin", "numeric"), Feature("day_of_week", "categorical", 8)))


@pytest.fixture
def toy_tables(toy_schema):
    rng = np.random.default_rng(0)
    users = {"gender": rng.integers(0, 3, 11)}
    items = {"genres": rng.integers(0, 5, (21, 3)), "year": rng.integers(0, 4, 21),
             "train_count": rng.integers(1, 10, 21)}
    return users, items


@pytest.fixture
def toy_batch():
    g = torch.Generator().manual_seed(0)
    return {"user_idx": torch.randint(1, 11, (8,), generator=g), "item_idx": torch.randint(1, 21, (8,), generator=g),
            "history": torch.randint(0, 21, (8, 5), generator=g), "hour_sin": torch.randn(8, generator=g),
            "day_of_week": torch.randint(1, 8, (8,), generator=g)}
