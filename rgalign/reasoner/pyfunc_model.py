"""MLflow models-from-code pyfunc of a reasoner (logged by ``rgalign.registry.log_reasoner_model``).

Input: a DataFrame with a ``context`` column (verbalized user contexts). Output: ``ltp`` (a list of floats per
row), the latent query embedding of Eq. 2-3. The reasoner directory travels as the ``reasoner`` artifact.
"""
import mlflow
import pandas as pd


class ReasonerPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch
        from rgalign.reasoner.ltp import LTPEncoder
        from rgalign.reasoner.sources import load_reasoner
        torch.set_num_threads(1)
        self.encoder = LTPEncoder(load_reasoner(context.artifacts["reasoner"]))

    def predict(self, context, model_input: pd.DataFrame, params=None):
        if "context" not in model_input:
            raise ValueError("input needs a 'context' column of verbalized user contexts")
        e = self.encoder.embed(model_input["context"].astype(str).tolist())
        return pd.DataFrame({"ltp": [row.tolist() for row in e]})


mlflow.models.set_model(ReasonerPyfunc())
