"""MLflow models-from-code pyfunc of a ranker (logged by ``rgalign.tracking.log_ranker``).

Input: a DataFrame with one row per request: the feature-service columns (after
``rgalign.features.context.derive_request_features``) and ``query_embedding`` (a list of floats; any value for
the baseline). Params: ``k`` (default 10). Output: ``intent_ids`` and ``scores`` (top-k lists) per row.
"""
import mlflow
import numpy as np
import pandas as pd


class RankerPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch
        from rgalign.ranker.checkpoint import load_ranker
        torch.set_num_threads(1)
        self.model, self.spec, self.cfg, self.intents = load_ranker(context.artifacts["checkpoint"])
        with torch.inference_mode():
            self.index = self.model.intent_index()

    def predict(self, context, model_input: pd.DataFrame, params=None):
        import torch
        k = int((params or {}).get("k", 10))
        x, _ = self.spec.encode(model_input)
        d_e = self.model.d_e or 1
        if "query_embedding" in model_input:
            e = torch.as_tensor(np.stack([np.asarray(v, np.float32) for v in model_input["query_embedding"]]))
        else:
            e = torch.zeros(len(model_input), d_e)
        with torch.inference_mode():
            s = self.model(x, e, intent_index=self.index)
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        return pd.DataFrame({"intent_ids": (top.indices + 1).tolist(), "scores": top.values.tolist()})


mlflow.models.set_model(RankerPyfunc())
