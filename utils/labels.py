"""The label value that marks a pixel as no class: VOC's object borders and void, Cityscapes'
unlabeled ids, pixels a pseudo label leaves out. Kept free of torch so that figures drawn from
results files load without it."""
IGNORE_INDEX = 255
