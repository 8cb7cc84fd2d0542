"""Visual-semantic embedding (paper 3). Placeholder until wired: see issue."""

from metricjax.errors import UserError


def build(config, mesh, tx):
  raise UserError("config.task='vse' is not wired into training yet.")


make_model_and_init = evaluate = build
