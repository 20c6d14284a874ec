"""Evaluation: splits, shift metrics, baselines and the benchmark runner.

Typical use::

    split = pertpyro.evaluation.split_cells(adata, seed=0)
    train, test = adata[split == "train"].copy(), adata[split == "test"].copy()
    table = pertpyro.evaluation.ate_metrics(model, test, adata_train=train)
    print(pertpyro.evaluation.format_table(table))
"""

from pertpyro.evaluation._artifacts import artifact_detection, energy_distance, qc_pass_rate
from pertpyro.evaluation._baselines import BASELINES, additive, no_change, shrunk_training_mean, training_mean
from pertpyro.evaluation._calibration import calibration_report, calibration_table, heldout_reference, report_labels
from pertpyro.evaluation._celleval import (
    cell_eval_installed,
    cell_eval_report,
    evaluation_cells,
    run_cell_eval,
    write_cell_eval_inputs,
)
from pertpyro.evaluation._controls import control_table, controls_report, null_pvalues, positive_control_labels
from pertpyro.evaluation._grn import (
    causalbench_stats,
    compare_rankings,
    correlation_baseline,
    edge_scores,
    enrichment,
    knockout_shift_baseline,
    model_rankings,
    naive_rankings,
    random_baseline,
)
from pertpyro.evaluation._metrics import METRIC_COLUMNS, shift_metrics, summarise, topk_jaccard
from pertpyro.evaluation._repeated import format_paired, paired_differences, repeated_evaluation, repeated_metrics
from pertpyro.evaluation._responders import (
    ResponderShifts,
    call_agreement,
    responder_effects,
    responder_shifts,
)
from pertpyro.evaluation._runner import ShiftPredictor, ate_metrics, format_table, to_perturbed_reference
from pertpyro.evaluation._splits import split_cells, split_heldout_combinations, split_heldout_perturbations
from pertpyro.evaluation._strength import corrected_slope, effect_strength

__all__ = [
    "artifact_detection",
    "energy_distance",
    "qc_pass_rate",
    "BASELINES",
    "METRIC_COLUMNS",
    "ShiftPredictor",
    "additive",
    "ate_metrics",
    "causalbench_stats",
    "corrected_slope",
    "effect_strength",
    "compare_rankings",
    "correlation_baseline",
    "edge_scores",
    "enrichment",
    "knockout_shift_baseline",
    "model_rankings",
    "naive_rankings",
    "random_baseline",
    "calibration_report",
    "cell_eval_installed",
    "cell_eval_report",
    "evaluation_cells",
    "run_cell_eval",
    "write_cell_eval_inputs",
    "control_table",
    "controls_report",
    "null_pvalues",
    "positive_control_labels",
    "calibration_table",
    "heldout_reference",
    "report_labels",
    "format_table",
    "ResponderShifts",
    "call_agreement",
    "responder_effects",
    "responder_shifts",
    "no_change",
    "format_paired",
    "repeated_evaluation",
    "paired_differences",
    "repeated_metrics",
    "shift_metrics",
    "shrunk_training_mean",
    "split_cells",
    "split_heldout_combinations",
    "split_heldout_perturbations",
    "summarise",
    "to_perturbed_reference",
    "topk_jaccard",
    "training_mean",
]
