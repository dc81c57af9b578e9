"""MLflow "models from code" entry point: logged with every kpiguard model, run when one is loaded.

It only names the wrapper class, which is imported from the installed project, so a logged model
holds no pickled Python object: its state is the bundle (config JSON + state_dict).
"""
import mlflow

from pipeline.serving import KpiguardModel

mlflow.models.set_model(KpiguardModel())
