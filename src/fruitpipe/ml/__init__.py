"""pyspark.ml surface: ImageFeaturizer (Transformer) and CentredPCA (Estimator/Model), persistable."""
from fruitpipe.ml.featurizer import ImageFeaturizer
from fruitpipe.ml.pca import CentredPCA, CentredPCAModel

__all__ = ["CentredPCA", "CentredPCAModel", "ImageFeaturizer"]
