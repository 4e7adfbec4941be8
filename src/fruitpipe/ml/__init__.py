"""pyspark.ml surface: ImageFeaturizer (Transformer), CentredPCA (Estimator) / CentredPCAModel."""
from fruitpipe.ml.featurizer import ImageFeaturizer
from fruitpipe.ml.logistic import load_logistic_regression, save_logistic_regression
from fruitpipe.ml.pca import CentredPCA, CentredPCAModel

__all__ = ["CentredPCA", "CentredPCAModel", "ImageFeaturizer", "load_logistic_regression", "save_logistic_regression"]
