import pytest
import torch

from gcl_zoo.metrics import accuracy_report, confusion_matrix, shot_groups


def test_shot_groups_thresholds():
    groups = shot_groups([500, 101, 100, 20, 19, 5])
    assert groups == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}


def test_accuracy_report_hand_checked():
    # 4 classes, 2 test images each; predictions: class 0 both right, class 1 one right, 2 none, 3 both
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    preds = torch.tensor([0, 0, 1, 0, 3, 1, 3, 3])
    logits = torch.nn.functional.one_hot(preds, 4).float()
    logits[4, 2] = 0.5  # class 2's first image has the true class second
    report = accuracy_report(logits, targets, train_cls_num_list=[300, 50, 60, 10], topk=(1, 2), with_confusion=True)
    assert report["top1"] == pytest.approx(62.5)
    assert report["top2"] > report["top1"]
    assert report["per_class"] == [100.0, 50.0, 0.0, 100.0]
    assert report["many"] == 100.0 and report["medium"] == pytest.approx(25.0) and report["few"] == 100.0
    assert report["confusion"][2] == [0, 1, 0, 1]
    assert confusion_matrix(preds, targets, 4).sum() == 8


def test_accuracy_report_checks_class_counts():
    with pytest.raises(ValueError, match="3 entries for 4 classes"):
        accuracy_report(torch.zeros(2, 4), torch.tensor([0, 1]), train_cls_num_list=[1, 2, 3])
